"""One grammar across the package: heads, positions, pos labels, draw counts, the ablation
vocabulary, progress bars and argument order mean the same thing in every technique."""

import importlib
import inspect
import pkgutil
import typing

import pytest
import torch

import workbench
from workbench import models
from workbench.core import checks
from workbench.core.metrics import LogitDiff
from workbench.techniques import attribution, lens, patching


def _public_functions():
    for info in pkgutil.walk_packages(workbench.__path__, "workbench."):
        if info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == mod.__name__:
                yield f"{mod.__name__}.{name}", obj


FUNCTIONS = dict(_public_functions())


def test_progress_bars_are_off_unless_asked_for():
    on = [n for n, f in FUNCTIONS.items()
          if "progress" in inspect.signature(f).parameters
          and inspect.signature(f).parameters["progress"].default is not False]
    assert not on, on


def test_draw_counts_are_called_n_draws():
    old = [n for n, f in FUNCTIONS.items() if {"n_random", "n_samples"} & set(inspect.signature(f).parameters)]
    assert not old, old


def test_one_ablation_vocabulary_under_one_name():
    vocabulary = set(typing.get_args(checks.Ablation))
    for name, f in FUNCTIONS.items():
        params = inspect.signature(f).parameters
        if "ablation" in params and params["ablation"].default is not inspect.Parameter.empty:
            assert params["ablation"].default in vocabulary, name
        kind = params.get("kind")
        assert kind is None or kind.default not in vocabulary, f"{name} names an ablation 'kind'"


def test_techniques_that_take_a_pair_read_model_clean_corrupted_metric():
    for name, f in FUNCTIONS.items():
        if ".course." in name:
            continue  # exercises keep the signatures their notebooks teach
        names = [p.name for p in inspect.signature(f).parameters.values()
                 if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        if any("clean" in n for n in names) and any("corrupt" in n for n in names) and "metric" in names:
            assert names[:4] == [names[0], names[1], names[2], "metric"] and "clean" in names[1] \
                and "corrupt" in names[2], f"{name}{inspect.signature(f)}"


def test_no_two_public_functions_share_a_name_with_different_meanings():
    by_name: dict[str, set[str]] = {}
    for qual in FUNCTIONS:
        by_name.setdefault(qual.rsplit(".", 1)[1], set()).add(qual)
    # course exercises restate a technique on purpose; each registry has register/get; each CLI a
    # main and an add_parser
    allowed = {"faithfulness", "logit_lens", "retrieval_hits", "register", "get", "main", "add_parser"}
    # each phenomenon's experiment module names the protocol's steps alike (one meaning: that step
    # of that phenomenon); select_heads is also IOI's rule for picking a class from a sweep
    steps = {"registration", "prepare", "select", "select_heads", "measure", "scorecard", "run"}
    shared = {n: q for n, q in by_name.items()
              if len(q) > 1 and n not in allowed
              and not (n in steps and all(".experiment." in x or x.endswith("ioi.circuits.select_heads") for x in q))}
    assert not shared, shared


def test_a_head_is_a_pair_or_a_label_everywhere(tiny):
    clean = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    corrupted = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    metric = LogitDiff(answers=[1, 2], wrong=[3, 4])
    a = patching.patch_heads(tiny, clean, corrupted, metric, heads=["L1H2"])
    b = patching.patch_heads(tiny, clean, corrupted, metric, heads=[(1, 2)])
    assert torch.equal(a.values, b.values)
    assert checks.heads(tiny, ["L0H3", (1, 0)]) == [(0, 3), (1, 0)]
    with pytest.raises(TypeError, match=r"pair \(layer, head\)"):
        patching.patch_heads(tiny, clean, corrupted, metric, heads=[2])


def test_a_position_tensor_means_one_per_prompt_everywhere(tiny):
    tokens = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    per_prompt = torch.tensor([2, 4])
    assert checks.position_mask(per_prompt, 2, 6).nonzero().tolist() == [[0, 2], [1, 4]]
    with pytest.raises(TypeError, match="one position per prompt"):  # sweeps take lists
        lens.logit_lens(tiny, tokens, positions=per_prompt)
    with pytest.raises(TypeError, match="one position per prompt"):
        patching.patch_resid(tiny, tokens, tokens.flip(0), LogitDiff(answers=[1, 2], wrong=[3, 4]),
                             positions=per_prompt)
    assert checks.positions([1, -1], 6) == [1, 5]


@pytest.mark.parametrize("which", ["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_pos_labels_are_the_same_in_every_result(which, request):
    model = request.getfixturevalue(which)  # no tokenizer: positions; a tokenizer: "p:token"
    clean = torch.randint(10, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    corrupted = clean.clone()
    corrupted[:, 2] += 1
    metric = LogitDiff(answers=[1, 2], wrong=[3, 4])
    want = models.position_labels(model, clean[0])
    assert patching.patch_resid(model, clean, corrupted, metric).labels["pos"] == want
    assert attribution.attribute(model, clean, corrupted, metric, sites=("resid_pre",)).resid.labels["pos"] == want
    assert lens.logit_lens(model, clean[:1]).rank.labels["pos"] == want
    assert all(isinstance(x, int) for x in want) if which == "tiny" else want[2].startswith("2:")

