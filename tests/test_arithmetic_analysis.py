"""Tests for workbench.phenomena.arithmetic.analysis: accuracy under ablation, top-k vs random-k, role attention."""

from dataclasses import dataclass, field

import pytest
import torch
from hooks import assert_no_hooks

from workbench.core.results import Result
from workbench.phenomena.arithmetic.analysis import (
    answer_accuracy,
    operand_attention,
    random_heads,
    top_heads,
    top_vs_random,
)
from workbench.techniques.ablation import ablate


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
    got = answer_accuracy(tiny, problems, heads=heads, ablation="mean", batch_size=4)
    with ablate(tiny, heads=heads, ablation="mean", reference=problems.clean_tokens):
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
    with pytest.raises(ValueError, match="heads available"):
        random_heads(tiny, 8, seed=0, exclude=[(0, 0)])


def test_top_vs_random_values(tiny, problems):
    scores = Result(torch.arange(8.0).reshape(2, 4), ("layer", "head"))
    r = top_vs_random(tiny, problems, scores, ks=[2], n_draws=2, seed=3, progress=False)
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
    with pytest.raises(ValueError, match="ablation"):
        answer_accuracy(tiny, problems, heads=[(0, 0)], ablation="max")
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
        answer_accuracy(tiny, _Problems(**bad), heads=[(0, 0)], ablation="zero")
    assert_no_hooks(tiny)


# ------------------------------------------------------------------------- whole answers, many sets


@dataclass
class _Sums:
    clean_tokens: torch.Tensor
    full_tokens: torch.Tensor
    answer_ids: torch.Tensor
    pos: dict = field(default_factory=dict)


@pytest.fixture
def sums(tiny):
    torch.manual_seed(1)
    full = torch.randint(0, 100, (10, 8))
    answers = tiny(full)[:, 6:8].argmax(-1)  # the model's own two-token answers: all right unablated
    full[:, 7] = answers[:, 0]  # teacher forcing: the first answer token is the input at END + 1
    answers = tiny(full)[:, 6:8].argmax(-1)
    answers[:3, 1] = (answers[:3, 1] + 1) % 100  # three wrong in the second token only
    return _Sums(full[:, :7], full, answers, {"A_START": torch.full((10,), 1), "A": torch.full((10,), 2),
                                              "B_START": torch.full((10,), 4), "B": torch.full((10,), 5),
                                              "END": torch.full((10,), 6)})


def test_sum_correct_matches_mean_ablation_per_set(tiny, sums):
    from workbench.phenomena.arithmetic.analysis import head_means, sum_correct

    sets = [[], [(0, 1)], [(1, 0), (1, 3)], [(0, 0), (0, 2), (1, 1)], [(1, 2), (0, 3)]]
    got = sum_correct(tiny, sums, sets, means=head_means(tiny, sums.full_tokens), sets_per_pass=2)
    want = []
    for s in sets:
        with ablate(tiny, heads=s, ablation="mean", reference=sums.full_tokens):
            logits = tiny(sums.full_tokens)[:, 6:8]
        want.append((logits.argmax(-1) == sums.answer_ids).all(-1).float())
    assert torch.equal(got, torch.stack(want))
    assert got[0].tolist() == [0.0] * 3 + [1.0] * 7  # the second token counts
    assert_no_hooks(tiny)
    with pytest.raises(ValueError, match="head_sets is empty"):
        sum_correct(tiny, sums, [], means=head_means(tiny, sums.full_tokens))
    with pytest.raises(ValueError, match="means have shape"):
        sum_correct(tiny, sums, [[]], means=head_means(tiny, sums.clean_tokens))


def test_operand_attention_per_problem_by_hand(tiny, sums):
    from workbench.phenomena.arithmetic.analysis import operand_attention_per_problem

    got = operand_attention_per_problem(tiny, sums)
    _, cache = tiny.run_with_cache(sums.clean_tokens)
    for layer in range(tiny.cfg.n_layers):
        p = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, 6]  # [batch, head, key]
        torch.testing.assert_close(got[:, layer], p[..., 1:3].sum(-1) + p[..., 4:6].sum(-1))


def test_sum_problems_give_nothing_away(smollm2):
    from workbench.phenomena.arithmetic.dataset import sum_problems

    ds = sum_problems(smollm2, n=40, seed=3)
    assert len(set(ds.prompts)) == 40 and ds.full_tokens.shape[1] == ds.clean_tokens.shape[1] + 1
    for prompt, bad, result in zip(ds.prompts, ds.corrupted_prompts, ds.results.tolist()):
        lines = prompt.split("\n")
        a, b = map(int, lines[-1].rstrip("=").split("+"))
        assert a + b == result and 10 <= result <= 99
        for shot in lines[:-1]:  # no digit of a worked result sits where the answer has it
            r = shot.split("=")[1]
            assert r[0] != str(result)[0] and r[1] != str(result)[1]
        c, d = map(int, bad.split("\n")[-1].rstrip("=").split("+"))
        assert str(c + d)[0] != str(result)[0] and str(c + d)[1] != str(result)[1]
    digits = [[smollm2.tokenizer.decode([t]) for t in row] for row in ds.answer_ids.tolist()]
    assert ["".join(d) for d in digits] == [str(r) for r in ds.results.tolist()]
