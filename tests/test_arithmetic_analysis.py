"""Tests for workbench.arithmetic: accuracy under ablation, top-k vs random-k, role attention."""

from dataclasses import dataclass, field

import pytest
import torch

from workbench.ablation import ablate
from workbench.arithmetic import (answer_accuracy, operand_attention, random_heads, top_heads,
                                  top_vs_random)
from workbench.results import Result
from hooks import assert_no_hooks


@dataclass
class _Problems:
    clean_tokens: torch.Tensor
    answer_ids: torch.Tensor
    pos: dict = field(default_factory=dict)


@pytest.fixture
def problems(tiny):
    torch.manual_seed(0)
    tokens = torch.randint(0, 100, (6, 7))
    logits = tiny(tokens)[:, -1]
    answers = logits.argmax(-1)
    answers[:2] = (answers[:2] + 1) % 100  # two wrong
    return _Problems(tokens, answers, {"A": torch.full((6,), 1), "OP": torch.full((6,), 2),
                                       "B_START": torch.full((6,), 3), "B": torch.full((6,), 4),
                                       "END": torch.full((6,), 6)})


def test_accuracy_matches_hand_count(tiny, problems):
    assert answer_accuracy(tiny, problems) == pytest.approx(4 / 6)


def test_ablated_accuracy_matches_plain_loop(tiny, problems):
    heads = [(0, 1), (1, 2)]
    got = answer_accuracy(tiny, problems, heads=heads, kind="mean", batch_size=4)
    with ablate(tiny, heads=heads, kind="mean", reference=problems.clean_tokens):
        logits = tiny(problems.clean_tokens)
    want = (logits[:, -1].argmax(-1) == problems.answer_ids).float().mean().item()
    assert got == pytest.approx(want)
    assert_no_hooks(tiny)


def test_top_heads_order_and_random_heads_seeded(tiny):
    scores = Result(torch.tensor([[0.1, 0.5, 0.2, 0.5], [0.9, float("nan"), 0.0, 0.3]]), ("layer", "head"))
    assert top_heads(scores, 3) == [(1, 0), (0, 1), (0, 3)]
    a = random_heads(tiny, 3, seed=1, exclude=[(0, 0)])
    assert a == random_heads(tiny, 3, seed=1, exclude=[(0, 0)]) and (0, 0) not in a
    assert len(set(a)) == 3
    with pytest.raises(ValueError, match="Cannot draw"):
        random_heads(tiny, 8, seed=0, exclude=[(0, 0)])


def test_top_vs_random_values(tiny, problems):
    scores = Result(torch.arange(8.0).reshape(2, 4), ("layer", "head"))
    r = top_vs_random(tiny, problems, scores, ks=[2], n_random=2, seed=3, progress=False)
    assert r.heads[2] == [(1, 3), (1, 2)]
    assert r.top.values[0] == pytest.approx(answer_accuracy(tiny, problems, heads=[(1, 3), (1, 2)]))
    for j, chosen in enumerate(r.random_sets[2]):
        assert not set(chosen) & {(1, 3), (1, 2)}
        assert r.draws[0, j] == pytest.approx(answer_accuracy(tiny, problems, heads=chosen))
    frame = r.to_frame()
    assert frame.loc[0, "drop_top"] == pytest.approx(r.base - r.top.values[0].item())


def test_operand_attention_matches_patterns(tiny, problems):
    r = operand_attention(tiny, problems)
    assert r.labels["key_pos"] == ["A", "OP", "B"]
    _, cache = tiny.run_with_cache(problems.clean_tokens)
    for layer in range(2):
        p = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, -1]  # [batch, head, key]
        torch.testing.assert_close(r.values[0, layer], p[:, :, 1].mean(0))
        torch.testing.assert_close(r.values[2, layer], p[:, :, 3:5].sum(-1).mean(0))


def test_bad_input(tiny, problems):
    with pytest.raises(ValueError, match="kind"):
        answer_accuracy(tiny, problems, heads=[(0, 0)], kind="max")
    with pytest.raises(TypeError, match="clean_tokens"):
        answer_accuracy(tiny, object())
    with pytest.raises(ValueError, match="roles"):
        operand_attention(tiny, problems, roles=["C"])
    with pytest.raises(ValueError, match="dims"):
        top_heads(Result(torch.zeros(3), ("k",)), 1)


def test_no_hooks_left_after_error(tiny, problems):
    bad = dict(vars(problems))
    bad["answer_ids"] = problems.answer_ids[:2]  # wrong length: the comparison raises inside ablate
    with pytest.raises(RuntimeError):
        answer_accuracy(tiny, _Problems(**bad), heads=[(0, 0)], kind="zero")
    assert_no_hooks(tiny)
