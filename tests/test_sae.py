"""Tests of workbench.techniques.sae on the tiny model; `slow` tests load SmolLM2 and the shipped SAE."""

import json

import pytest
import torch
from hooks import assert_no_hooks

from workbench import models
from workbench import sae as wsae
from workbench.core.metrics import LogitDiff


def random_sae(model, hook_name, *, d_sae=96, k=8, seed=0, rescale=True):
    """A SAELens TopKSAE with seeded random weights, reading ``hook_name`` of ``model``."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    d_in = wsae.core.hook_width(model, hook_name)
    torch.manual_seed(seed)
    cfg = TopKSAEConfig(
        d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=rescale,
        reshape_activations="hook_z" if hook_name.endswith("hook_z") else "none",
        metadata=SAEMetadata(hook_name=hook_name, model_name=model.cfg.model_name, skip_bos=True),
    )
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


@pytest.fixture
def corpus():
    tokens = torch.randint(1, 100, (24, 12), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 0  # position 0 plays BOS
    return tokens


@pytest.fixture
def sae(tiny):
    return random_sae(tiny, "blocks.1.hook_resid_pre")


# ---------------------------------------------------------------------------- training, I/O


@pytest.fixture(scope="module")
def trained():
    model = models.tiny_model()
    tokens = torch.randint(1, 100, (40, 16), generator=torch.Generator().manual_seed(1))
    sae = wsae.train_sae(model, "blocks.1.hook_resid_pre", tokens, d_sae=64, k=8,
                         n_tokens=12_800, batch_size=128, lr=3e-3, progress=False)
    return model, tokens, sae


def test_train_sae_gives_a_saelens_sae_that_learned(trained):
    from sae_lens import SAE

    model, tokens, sae = trained
    assert isinstance(sae, SAE) and sae.cfg.architecture() == "topk"
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (64, 64, 8)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"
    assert sae.cfg.metadata.workbench_training["steps"] == 100
    stats = wsae.evaluate_sae(model, sae, tokens, progress=False)
    untrained = wsae.evaluate_sae(model, random_sae(model, "blocks.1.hook_resid_pre", d_sae=64), tokens,
                                  progress=False)
    assert stats["explained_variance"] > 0.5 > untrained["explained_variance"]
    assert stats["l0"] == pytest.approx(8, abs=0.5)
    assert_no_hooks(model)


def test_evaluate_sae_matches_a_plain_loop(trained):
    model, tokens, sae = trained
    stats = wsae.evaluate_sae(model, sae, tokens, batch_size=7, progress=False)
    xs, errs, l0 = [], [], []
    for row in tokens:  # one prompt at a time, by hand
        _, cache = model.run_with_cache(row[None])
        x = cache["blocks.1.hook_resid_pre"][0, 1:]
        lat = sae.encode(x)
        xs.append(x)
        errs.append(float(((x - sae.decode(lat)) ** 2).sum().detach()))
        l0.append((lat > 0).sum(-1).float())
    x = torch.cat(xs).double()
    ev = 1 - float(sum(errs)) / float(((x - x.mean(0)) ** 2).sum())
    assert stats["explained_variance"] == pytest.approx(ev, abs=1e-4)
    assert stats["l0"] == pytest.approx(float(torch.cat(l0).mean()), abs=1e-6)
    clean = model(tokens, return_type="loss")  # TransformerLens's own loss
    assert stats["clean_loss"] == pytest.approx(float(clean), abs=1e-5)


def test_save_and_load_roundtrip(trained, tmp_path):
    from sae_lens import SAE

    model, _, sae = trained
    wsae.save_sae(sae, tmp_path / "full")
    wsae.save_sae(sae, tmp_path / "half", half=True)
    full = wsae.load_sae(tmp_path / "full", model=model)
    half = SAE.load_from_disk(str(tmp_path / "half"))  # SAELens alone reads it
    assert half.W_dec.dtype == torch.float32
    assert torch.equal(full.W_dec, sae.W_dec) and torch.equal(full.b_enc, sae.b_enc)
    torch.testing.assert_close(half.W_enc, sae.W_enc, atol=1e-3, rtol=1e-3)
    assert (tmp_path / "half" / "sae_weights.safetensors").stat().st_size < 0.6 * (
        tmp_path / "full" / "sae_weights.safetensors").stat().st_size
    assert half.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"


def test_train_on_hook_z(tiny_gqa, corpus):
    sae = wsae.train_sae(tiny_gqa, "blocks.0.attn.hook_z", corpus, d_sae=32, k=4, n_tokens=1024,
                         batch_size=128, progress=False)
    assert sae.cfg.d_in == 64 and sae.cfg.reshape_activations == "hook_z"
    logits = wsae.spliced_logits(tiny_gqa, sae, corpus[:3], with_error=True)
    torch.testing.assert_close(logits, tiny_gqa(corpus[:3]), atol=1e-5, rtol=1e-5)
    assert not wsae.feature_activations(tiny_gqa, sae, corpus[:1]).empty


def test_b_dec_init_mean_starts_at_the_mean_activation(tiny, corpus):
    """With a large offset added to every activation, the 'mean' start puts b_dec on it: after
    zero training steps' worth of change the folded b_dec equals the raw mean."""
    acts = torch.randn(512, tiny.cfg.d_model, generator=torch.Generator().manual_seed(0)) + 40.0
    sae = wsae.train_sae(tiny, "blocks.1.hook_resid_pre", corpus, d_sae=32, k=4, n_tokens=128,
                         batch_size=128, lr=1e-9, b_dec_init="mean", activations=acts, progress=False)
    torch.testing.assert_close(sae.b_dec.detach(), acts.mean(0), atol=1e-3, rtol=1e-4)
    zero = wsae.train_sae(tiny, "blocks.1.hook_resid_pre", corpus, d_sae=32, k=4, n_tokens=128,
                          batch_size=128, lr=1e-9, activations=acts, progress=False)
    assert zero.b_dec.abs().max() < 1e-3
    assert sae.cfg.metadata.workbench_training["b_dec_init"] == "mean"
    with pytest.raises(ValueError, match="b_dec_init must be"):
        wsae.train_sae(tiny, "blocks.1.hook_resid_pre", corpus, d_sae=32, k=4, n_tokens=128,
                       batch_size=128, b_dec_init="median", activations=acts, progress=False)


# ---------------------------------------------------------------------------- input checks


def test_sae_for_another_model_is_refused(sae, corpus):
    narrow = models.tiny_model(d_model=32)
    with pytest.raises(ValueError, match="d_in=64 does not match"):
        wsae.check_sae(narrow, sae)
    deep = random_sae(models.tiny_model(n_layers=4), "blocks.3.hook_resid_pre")
    with pytest.raises(ValueError, match="does not have"):
        wsae.feature_activations(models.tiny_model(), deep, corpus[:1])
    other = random_sae(models.tiny_model(), "blocks.1.hook_resid_pre")
    other.cfg.metadata.model_name = "gpt2"
    with pytest.raises(ValueError, match="trained on 'gpt2'"):
        wsae.check_sae(models.tiny_model(), other)
    with pytest.raises(ValueError, match="no hook point"):
        wsae.train_sae(models.tiny_model(), "blocks.9.hook_resid_pre", corpus, d_sae=8, k=2, n_tokens=64)


def test_feature_index_out_of_range(tiny, sae, corpus):
    for call in [
        lambda: wsae.feature_logit_effects(tiny, sae, 96),
        lambda: wsae.top_contexts(tiny, sae, -1, corpus, progress=False),
        lambda: wsae.steer(tiny, sae, 1000, corpus[:2], [1.0], lambda logits: logits.mean()),
        lambda: wsae.ablate_features(tiny, sae, [3, 96]).__enter__(),
        lambda: wsae.feature_direction(sae, 96),
    ]:
        with pytest.raises(ValueError, match="out of range"):
            call()
    assert_no_hooks(tiny)


def test_empty_corpus(tiny, sae):
    for empty in ([], ["", "   "], torch.zeros(0, 5, dtype=torch.long)):
        with pytest.raises(ValueError, match="empty"):
            wsae.corpus_tokens(tiny, empty)
    with pytest.raises(ValueError, match="empty"):
        wsae.top_contexts(tiny, sae, 0, [], progress=False)
    with pytest.raises(ValueError, match="empty"):
        wsae.train_sae(tiny, "blocks.1.hook_resid_pre", [], d_sae=8, k=2, n_tokens=64)


def test_no_hooks_left_after_errors(tiny, sae, corpus):
    def broken(logits):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        wsae.steer(tiny, sae, 0, corpus[:2], [1.0, 2.0], broken, progress=False)
    with pytest.raises(RuntimeError, match="inside"):
        with wsae.ablate_features(tiny, sae, [0, 1]):
            tiny(corpus[:2])
            raise RuntimeError("inside")
    with pytest.raises(RuntimeError, match="inside"):
        with wsae.spliced(tiny, sae, with_error=True):
            raise RuntimeError("inside")
    with pytest.raises(ValueError, match="scalar"):
        wsae.attribute_features(tiny, corpus[:2], corpus[2:4], lambda logits: logits[:, -1, 0], sae=sae)
    with pytest.raises(RuntimeError, match="metric failed"):
        wsae.patch_features(tiny, corpus[:2], corpus[2:4], broken, sae=sae, features=[0])
    assert_no_hooks(tiny)


# ---------------------------------------------------------------------------- reading features


def test_feature_activations_match_saelens_encode(tiny, sae, corpus):
    frame = wsae.feature_activations(tiny, sae, corpus[:2], top_k=3)
    _, cache = tiny.run_with_cache(corpus[:2])
    latents = sae.encode(cache["blocks.1.hook_resid_pre"]).detach()
    assert set(frame["pos"]) == set(range(1, corpus.shape[1]))  # BOS left out
    for row in frame.itertuples():
        assert row.activation == pytest.approx(float(latents[row.prompt, row.pos, row.feature]), abs=1e-6)
    top = frame[frame["rank"] == 0].set_index(["prompt", "pos"])["feature"]
    assert top.loc[(1, 5)] == int(latents[1, 5].argmax())


def test_top_contexts_find_the_maximum(tiny, sae, corpus):
    feature = 7
    frame = wsae.top_contexts(tiny, sae, feature, corpus, k=4, window=3, progress=False)
    _, cache = tiny.run_with_cache(corpus)
    acts = sae.encode(cache["blocks.1.hook_resid_pre"]).detach()[:, 1:, feature]
    assert frame["activation"].iloc[0] == pytest.approx(float(acts.max()), abs=1e-6)
    assert frame["activation"].is_monotonic_decreasing and len(frame) == 4
    first = frame.iloc[0]
    assert f"«{int(corpus[first.row, first.pos])}»" in first.context
    assert first.tokens[first.center] == first.token
    assert first.word == first.token.strip()  # the tiny model's "tokens" are numbers, not letters
    html = wsae.contexts_html(frame)
    assert html.count("<div style") == 4 and "feature 7" in html._repr_html_()


@pytest.mark.parametrize("tokens, i, word", [
    ([" J", "or", "ica", " said"], 0, "Jorica"),
    ([" J", "or", "ica", " said"], 2, "Jorica"),
    ([" J", "or", "ica", " said"], 3, "said"),
    ([" Anna", ",", " Peter"], 0, "Anna"),
    ([" Anna", ",", " Peter"], 1, ","),
    (["Y", "esterday", ",", " Anna"], 1, "Yesterday"),
    ([" 4", "8", "2"], 1, "8"),  # digits are not letters: each stands alone
])
def test_word_at_joins_the_pieces_of_one_word(tokens, i, word):
    assert wsae.word_at(tokens, i) == word


def test_feature_direction_is_the_decoder_row(sae):
    d = wsae.feature_direction(sae, 5)
    torch.testing.assert_close(d, sae.W_dec[5] / sae.W_dec[5].norm(), atol=1e-6, rtol=1e-5)
    plain = random_sae(models.tiny_model(), "blocks.1.hook_resid_pre", rescale=False)
    torch.testing.assert_close(wsae.feature_direction(plain, 5), plain.W_dec[5].detach())


def test_logit_effects_by_hand_and_on_a_processed_model(tiny_gqa):
    sae = random_sae(tiny_gqa, "blocks.1.hook_resid_post")
    effects = wsae.feature_logit_effects(tiny_gqa, sae, 3, k=4)
    d = wsae.feature_direction(sae, 3)
    torch.testing.assert_close(effects.effects.values, (d * tiny_gqa.ln_final.w) @ tiny_gqa.W_U)
    assert effects.promoted["value"].iloc[0] == pytest.approx(float(effects.effects.values.max()))
    assert len(effects.to_frame()) == 8

    raw = models.tiny_model()  # LayerNorm: centring, then weight; folded on a processed model
    processed = models.tiny_model()
    processed.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=True)
    assert getattr(processed.ln_final, "w", None) is None
    sae = random_sae(raw, "blocks.1.hook_resid_post")
    a = wsae.feature_logit_effects(raw, sae, 2).effects.values
    b = wsae.feature_logit_effects(processed, sae, 2).effects.values
    torch.testing.assert_close(a - a.mean(), b, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------- splicing


def test_splice_with_error_term_is_the_clean_model(tiny, sae, corpus):
    clean = tiny(corpus)
    torch.testing.assert_close(wsae.spliced_logits(tiny, sae, corpus, with_error=True), clean,
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(wsae.spliced_logits(tiny, sae, corpus), clean, atol=1e-3)
    s = wsae.splice(tiny, sae, corpus, with_error=True)
    assert s.spliced_loss == pytest.approx(s.clean_loss, abs=1e-5)
    assert s.clean_loss == pytest.approx(float(tiny(corpus, return_type="loss")), abs=1e-5)
    assert_no_hooks(tiny)


def test_splice_losses_by_hand(tiny, sae, corpus):
    s = wsae.splice(tiny, sae, corpus)
    hook = "blocks.1.hook_resid_pre"

    def recon(act, hook):  # by hand: SAELens forward everywhere but position 0
        out = sae(act).detach()
        out[:, 0] = act[:, 0]
        return out

    def zero(act, hook):
        out = torch.zeros_like(act)
        out[:, 0] = act[:, 0]
        return out

    spliced = tiny.run_with_hooks(corpus, return_type="loss", fwd_hooks=[(hook, recon)])
    zeroed = tiny.run_with_hooks(corpus, return_type="loss", fwd_hooks=[(hook, zero)])
    assert s.spliced_loss == pytest.approx(float(spliced), abs=1e-5)
    assert s.zero_loss == pytest.approx(float(zeroed), abs=1e-5)
    assert s.recovered == pytest.approx((s.zero_loss - s.spliced_loss) / (s.zero_loss - s.clean_loss))


def test_massive_activation_tokens_are_left_alone(tiny, sae, corpus):
    hook = "blocks.1.hook_resid_pre"
    _, cache = tiny.run_with_cache(corpus)
    norms = cache[hook].norm(dim=-1)
    sae.cfg.metadata.max_norm = float(norms[:, 1:].median())  # half the tokens count as outliers
    outliers = norms > sae.cfg.metadata.max_norm
    outliers[:, 0] = False
    stats = wsae.evaluate_sae(tiny, sae, corpus, progress=False)
    assert stats["n_outliers_left_out"] == int(outliers.sum())
    assert stats["n_tokens"] == corpus[:, 1:].numel() - int(outliers.sum())
    frame = wsae.feature_activations(tiny, sae, corpus[:2])
    assert not any(outliers[r.prompt, r.pos] for r in frame.itertuples())

    store = {}

    def keep_output(act, hook):  # runs after the splice hook: sees what the next block reads
        store["x"] = act.clone()

    with wsae.spliced(tiny, sae), tiny.hooks(fwd_hooks=[(hook, keep_output)]):
        tiny(corpus)
    spliced_x = store["x"]
    torch.testing.assert_close(spliced_x[outliers], cache[hook][outliers])
    assert not torch.allclose(spliced_x[~outliers][1:], cache[hook][~outliers][1:])


# ---------------------------------------------------------------------------- interventions


def test_ablate_features_subtracts_their_decoded_contribution(tiny, sae, corpus):
    hook = "blocks.1.hook_resid_pre"
    feats = [1, 4, 9]

    def by_hand(act, hook):
        lat = sae.encode(act)
        out = act.clone()
        for f in feats:
            out[:, 1:] -= lat[:, 1:, f, None] * wsae.feature_direction(sae, f)
        return out

    expected = tiny.run_with_hooks(corpus, fwd_hooks=[(hook, by_hand)])
    with wsae.ablate_features(tiny, sae, feats):
        got = tiny(corpus)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with wsae.ablate_features(tiny, sae, [2], positions=[3]):
        only3 = tiny(corpus)
    assert torch.allclose(only3[:, :3], tiny(corpus)[:, :3], atol=1e-6)  # causal: earlier untouched
    assert_no_hooks(tiny)


def _ioi_like(tiny):
    clean = torch.randint(1, 100, (4, 8), generator=torch.Generator().manual_seed(3))
    clean[:, 0] = 0
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 11) % 99 + 1
    return clean, corrupted, LogitDiff(answers=[5, 6, 7, 8], wrong=[9, 10, 11, 12])


def test_attribution_equals_exact_patching_where_linear(tiny):
    # After ln_final the logits are linear in the activation, so the first-order estimate is exact.
    sae = random_sae(tiny, "ln_final.hook_normalized", d_sae=48, k=12)
    clean, corrupted, metric = _ioi_like(tiny)
    approx = wsae.attribute_features(tiny, clean, corrupted, metric, sae=sae, by_pos=True)
    feats = approx.values.abs().sum(0).topk(6).indices.tolist()
    exact = wsae.patch_features(tiny, clean, corrupted, metric, sae=sae, features=feats, by_pos=True, progress=False)
    torch.testing.assert_close(approx.values[:, feats], exact.values, atol=1e-4, rtol=1e-4)
    assert approx.meta["corrupted"] == pytest.approx(exact.meta["corrupted"], abs=1e-6)
    assert exact.values[0].eq(exact.meta["corrupted"]).all()  # BOS is never patched
    assert_no_hooks(tiny)


def test_attribution_agrees_with_exact_patching_mid_layer(tiny, sae):
    clean, corrupted, metric = _ioi_like(tiny)
    approx = wsae.attribute_features(tiny, clean, corrupted, metric, sae=sae)
    base = approx.meta["corrupted"]
    feats = (approx.values - base).abs().topk(8).indices.tolist()
    exact = wsae.patch_features(tiny, clean, corrupted, metric, sae=sae, features=feats, progress=False)
    a, e = approx.values[feats] - base, exact.values - base
    assert torch.corrcoef(torch.stack([a, e]))[0, 1] > 0.95
    assert float((a - e).norm() / e.norm()) < 0.35  # first order: close, not exact


def test_steer_dose_response(tiny, sae, corpus):
    tokens = corpus[:3]
    feature = 6
    d = wsae.feature_direction(sae, feature)
    metric = lambda logits: logits[:, -1].log_softmax(-1)[:, 17].mean()  # noqa: E731
    r = wsae.steer(tiny, sae, feature, tokens, [0.0, 1.0, 4.0], metric, progress=False)
    assert r.dims == ("scale",) and r.labels["scale"] == [0.0, 1.0, 4.0]
    assert r.values[0] == pytest.approx(float(metric(tiny(tokens))), abs=1e-6)

    def add(act, hook):  # by hand, at every position but BOS
        out = act.clone()
        out[:, 1:] += 4.0 * d
        return out

    by_hand = metric(tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", add)]))
    assert r.values[2] == pytest.approx(float(by_hand), abs=1e-5)
    fig = r.plot()
    from workbench import plot

    assert plot.dose_response(r).axes and fig.axes
    assert_no_hooks(tiny)


def test_logit_effects_plot(tiny, sae):
    fig = wsae.feature_logit_effects(tiny, sae, 1, k=3).plot()
    assert len(fig.axes[0].patches) == 6


# ---------------------------------------------------------------------------- shipped SAE


@pytest.mark.slow
def test_shipped_sae_loads_with_saelens_and_matches_its_metrics(smollm2):
    from sae_lens import SAE

    folder = wsae.SHIPPED_SAES["smollm2-135m"]
    sae = SAE.load_from_disk(str(folder))
    assert sae.W_dec.dtype == torch.float32
    assert sae.cfg.metadata.hook_name == "blocks.15.hook_resid_pre"
    wsae.check_sae(smollm2, sae)
    reported = json.loads((folder / "metrics.json").read_text())["heldout"]
    docs = wsae.load_corpus("heldout")[:12]
    stats = wsae.evaluate_sae(smollm2, sae, docs, max_tokens=1024, progress=False)
    assert stats["explained_variance"] == pytest.approx(reported["explained_variance"], abs=0.06)
    assert stats["l0"] <= sae.cfg.k
    assert stats["spliced_loss"] > stats["clean_loss"]
    assert_no_hooks(smollm2)


@pytest.mark.slow
def test_shipped_corpus_splits_are_disjoint():
    train, heldout = wsae.load_corpus("train"), wsae.load_corpus("heldout")
    assert train and heldout and not set(train) & set(heldout)
    assert len(wsae.load_corpus("all")) == len(train) + len(heldout)


def test_train_sae_under_no_grad(tiny, corpus):
    """A notebook that turned gradients off globally can still train an SAE (and gets them back off)."""
    with torch.no_grad():
        sae = wsae.train_sae(tiny, "blocks.1.hook_resid_pre", corpus, d_sae=32, k=4, n_tokens=256,
                             batch_size=128, progress=False)
        assert not torch.is_grad_enabled()
    assert sae.cfg.d_sae == 32
