"""The toy modular-addition model: shipped weights, held-out accuracy, problems, training."""

import json
import sys
from pathlib import Path

import pytest
import torch

from workbench.models.toy import (
    TOY_DIR,
    ToyConfig,
    build_toy_model,
    load_toy_model,
    save_toy,
    toy_accuracy,
    toy_problems,
    toy_split,
    train_toy,
)
from workbench.phenomena.answers import keep_correct

TINY = ToyConfig(p=7, d_model=16, n_heads=2, d_mlp=32, steps=4, eval_every=2)


@pytest.fixture(scope="module")
def toy():
    return load_toy_model(train_if_missing=False)


def test_shipped_model_reaches_its_reported_accuracy(toy):
    reported = json.loads((TOY_DIR / "metrics.json").read_text())
    split = toy_split(toy.toy_config)
    test_acc = toy_accuracy(toy, split["test"])
    assert test_acc == pytest.approx(reported["test_accuracy"], abs=1e-4)
    assert toy_accuracy(toy, split["train"]) == pytest.approx(reported["train_accuracy"], abs=1e-4)
    assert test_acc >= 0.99 and reported["n_test"] == len(split["test"]) > 500
    # The held-out pairs are really held out.
    train = {tuple(p) for p in split["train"].tolist()}
    assert not any(tuple(p) in train for p in split["test"].tolist())
    assert len(train) + len(split["test"]) == toy.toy_config.p ** 2


def test_heads_attend_from_equals_to_the_operands(toy):
    ds = toy_problems(toy, n=200)
    _, cache = toy.run_with_cache(ds.clean_tokens)
    pattern = cache["pattern", 0][:, :, 2]  # [batch, head, key] from "="
    to_operands = pattern[..., 0] + pattern[..., 1]
    assert (to_operands.mean(0) > 0.9).all()


@pytest.mark.parametrize("corrupt", ["a", "b", "both"])
def test_toy_problems(toy, corrupt):
    p = toy.toy_config.p
    ds = toy_problems(toy, n=300, corrupt=corrupt, seed=1)
    assert ds.clean_tokens.shape == ds.corrupted_tokens.shape == (300, 3)
    assert (ds.clean_tokens[:, 2] == p).all() and (ds.corrupted_tokens[:, 2] == p).all()
    assert torch.equal(ds.answer_ids, ds.pairs.sum(1) % p)
    assert torch.equal(ds.counterfactual_ids, ds.corrupted_pairs.sum(1) % p)
    assert (ds.answer_ids != ds.counterfactual_ids).all()
    changed = ds.pairs != ds.corrupted_pairs
    expect = {"a": [True, False], "b": [False, True], "both": [True, True]}[corrupt]
    assert (changed == torch.tensor(expect)).all()
    assert ds.pos["A"].eq(0).all() and ds.pos["B"].eq(1).all() and ds.pos["END"].eq(2).all()
    test_pairs = {tuple(x) for x in toy_split(toy.toy_config)["test"].tolist()}
    assert all(tuple(x) in test_pairs for x in ds.pairs.tolist())


def test_seeded_subset_and_metric(toy):
    a, b, c = (toy_problems(toy, n=50, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.clean_tokens, b.clean_tokens) and torch.equal(a.corrupted_tokens, b.corrupted_tokens)
    assert not torch.equal(a.clean_tokens, c.clean_tokens)
    assert len(toy_problems(toy, split="all")) == toy.toy_config.p ** 2
    logits = toy(a.clean_tokens)
    hand = logits[torch.arange(50), 2, a.answer_ids] - logits[torch.arange(50), 2, a.counterfactual_ids]
    torch.testing.assert_close(a.logit_diff(per_prompt=True)(logits), hand)
    assert a.logit_diff()(logits) > 5 and a.logit_diff()(toy(a.corrupted_tokens)) < -5
    kept = keep_correct(toy, a, criterion="argmax", verbose=False)
    assert len(kept) == kept.meta["keep_correct"]["kept"] == 50  # the model is right on all
    sub = a.subset([3, 1])
    assert sub.pairs.tolist() == [a.pairs[3].tolist(), a.pairs[1].tolist()]


def test_bad_options(toy):
    with pytest.raises(ValueError, match="split must be"):
        toy_problems(toy, split="val")
    with pytest.raises(ValueError, match="corrupt must be"):
        toy_problems(toy, corrupt="c")
    with pytest.raises(ValueError, match="n must be between"):
        toy_problems(toy, n=10**6)
    from workbench.models import tiny_model

    with pytest.raises(TypeError, match="needs a toy model"):
        toy_problems(tiny_model())
    with pytest.raises(ValueError, match="p must be"):
        ToyConfig(p=2)
    with pytest.raises(ValueError, match="train_frac"):
        ToyConfig(train_frac=1.0)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        ToyConfig(d_model=30, n_heads=4)
    with pytest.raises(FileNotFoundError, match="train_toy.py"):
        load_toy_model(Path("/nonexistent/toy"), train_if_missing=False)


def test_training_is_seeded_and_saves_what_loads(tmp_path):
    m1, metrics = train_toy(TINY, progress=False)
    m2, _ = train_toy(TINY, progress=False)
    for (k, v1), (_, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(v1, v2), k
    assert metrics["steps"] == 4 and {"train_accuracy", "test_accuracy", "train_seconds"} <= set(metrics)
    assert [h[0] for h in metrics["history"]] == [0, 2, 3]
    save_toy(m1, metrics, tmp_path)
    loaded = load_toy_model(tmp_path, train_if_missing=False)
    assert loaded.toy_config == TINY and loaded.toy_metrics["steps"] == 4
    x = toy_problems(loaded, split="all").clean_tokens
    torch.testing.assert_close(loaded(x), m1(x))


def test_missing_weights_are_trained_and_cached(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_json()))
    model = load_toy_model(tmp_path, progress=False)
    assert (tmp_path / "weights.safetensors").exists() and model.toy_config == TINY
    reference, _ = train_toy(TINY, progress=False)
    x = toy_problems(model, split="all").clean_tokens
    torch.testing.assert_close(model(x), reference(x))


def test_script_trains_and_saves(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import train_toy as script

    threads = torch.get_num_threads()
    assert script.main(["--steps", "2", "--out", str(tmp_path), "--no-progress",
                        "--threads", str(threads)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 and json.loads((tmp_path / "config.json").read_text())["steps"] == 2
    assert build_toy_model(ToyConfig(steps=2)).cfg.d_vocab == 54
