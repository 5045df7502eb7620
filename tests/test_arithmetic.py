"""Arithmetic prompts: templates, first-digit answers, same-length counterfactuals, errors."""

import re

import pytest
import torch

from workbench.models import tiny_model, to_tokens
from workbench.phenomena.arithmetic.dataset import (
    OP_WORDS,
    answer_correct,
    arithmetic_problems,
    keep_correct,
)


class DigitTokenizer:
    """Digits, operators and punctuation one token each; words keep their leading space; a space
    before a digit is its own token (as in SmolLM2 and Gemma). ``digit_pairs=True`` writes numbers
    in chunks of two ("123" -> "12", "3"); ``whole_numbers=True`` writes each number whole."""

    def __init__(self, *, digit_pairs: bool = False, whole_numbers: bool = False):
        digits = r"\d+" if whole_numbers else r"\d\d|\d" if digit_pairs else r"\d"
        self.pattern = re.compile(rf" ?[^\W\d_]+|{digits}| |\n|[^\w\s]")
        self.vocab = {"<bos>": 0, "<pad>": 1}
        self.bos_token_id, self.pad_token_id, self.eos_token_id = 0, 1, 1
        self.padding_side = "right"

    def encode(self, text, add_special_tokens=False):
        pieces = self.pattern.findall(text)
        assert "".join(pieces) == text
        return [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]

    def decode(self, ids):
        inverse = {i: p for p, i in self.vocab.items()}
        return "".join(inverse[int(i)] for i in ids)


def digit_model(**kwargs):
    model = tiny_model(d_vocab=12000, d_model=32)
    model.tokenizer = DigitTokenizer(**kwargs)
    return model


@pytest.fixture
def dm():
    return digit_model()


def _value(prompt: str) -> tuple[int, str, int]:
    a, op, b = re.findall(r"(\d+)\s*([+\-*]|plus|minus|times)\s*(\d+)\D*$", prompt)[0]
    op = {"plus": "+", "minus": "-", "times": "*"}.get(op, op)
    return int(a), op, int(b)


def _eval(a, op, b):
    return {"+": a + b, "-": a - b, "*": a * b}[op]


@pytest.mark.parametrize("template", ["equation", "statement", "few_shot"])
@pytest.mark.parametrize("digits", [1, 2])
@pytest.mark.parametrize("corruption", ["operands", "operator"])
def test_prompts_answers_and_counterfactuals(dm, template, digits, corruption):
    ops = ("+", "-", "*") if not (template == "few_shot" and digits == 2) else ("*",)
    ds = arithmetic_problems(dm, ops=ops, digits=digits, template=template, n=24,
                             corruption=corruption, seed=0)
    tok = dm.tokenizer
    assert len(ds) == 24 and ds.clean_tokens.shape == ds.corrupted_tokens.shape
    assert torch.equal(ds.clean_tokens, to_tokens(dm, ds.prompts))
    assert (ds.answer_ids != ds.counterfactual_ids).all()
    lo, hi = (1, 9) if digits == 1 else (10, 99)
    for i in range(len(ds)):
        a, op, b = _value(ds.prompts[i])
        a2, op2, b2 = _value(ds.corrupted_prompts[i])
        assert ds.ops[i] == op and ds.operands[i].tolist() == [a, b]
        assert ds.corrupted_ops[i] == op2 and ds.corrupted_operands[i].tolist() == [a2, b2]
        assert lo <= min(a, b, a2, b2) and max(a, b, a2, b2) <= hi
        assert ds.results[i] == _eval(a, op, b) >= 0 and ds.corrupted_results[i] == _eval(a2, op2, b2) >= 0
        if corruption == "operands":
            assert op2 == op and (a2, b2) != (a, b)
        else:
            assert op2 != op and (a2, b2) == (a, b)
        # The answer is the first digit of the result, right after the prompt.
        assert tok.decode([ds.answer_ids[i]]) == ds.answer_strs[i] == str(int(ds.results[i]))[0]
        assert tok.decode([ds.counterfactual_ids[i]]) == str(int(ds.corrupted_results[i]))[0]
        # Positions point at the operands and operator of the final problem.
        row = ds.clean_tokens[i]
        assert tok.decode(row[ds.pos["A_START"][i] : ds.pos["A"][i] + 1]) == str(a)
        assert tok.decode(row[ds.pos["B_START"][i] : ds.pos["B"][i] + 1]) == str(b)
        assert tok.decode([row[ds.pos["OP"][i]]]).strip() in (op, OP_WORDS[op])
        assert ds.pos["END"][i] == ds.clean_tokens.shape[1] - 1
    if template == "statement":
        assert all(p.endswith("Answer: ") for p in ds.prompts)  # the space token is in the prompt
    if template == "few_shot":
        lines = ds.prompts[0].split("\n")
        assert len(lines) == 3 and all(_eval(*_value(l.split("=")[0] + "=")) == int(l.split("=")[1])
                                       for l in lines[:2])


def test_seeded_and_corruption_independent(dm):
    a = arithmetic_problems(dm, n=20, seed=1)
    b = arithmetic_problems(dm, n=20, seed=1)
    c = arithmetic_problems(dm, n=20, seed=2)
    d = arithmetic_problems(dm, n=20, seed=1, corruption="operator")
    assert a.prompts == b.prompts and torch.equal(a.corrupted_tokens, b.corrupted_tokens)
    assert a.prompts != c.prompts
    assert d.prompts == a.prompts and d.corrupted_prompts != a.corrupted_prompts
    assert len(set(a.prompts)) == 20  # no repeats


def test_whole_number_tokens_are_accepted():
    model = digit_model(whole_numbers=True)
    ds = arithmetic_problems(model, ops=("*",), digits=1, n=20)
    assert [model.tokenizer.decode([t]) for t in ds.answer_ids] == [str(int(r)) for r in ds.results]


def test_logit_diff_and_keep_correct_match_a_plain_loop(dm):
    ds = arithmetic_problems(dm, n=30, seed=0)
    with torch.no_grad():  # make two answer digits the top prediction everywhere
        dm.b_U[ds.answer_ids[:2]] += 50.0
    logits = dm(ds.clean_tokens)
    hand = logits[:, -1].gather(1, ds.answer_ids[:, None])[:, 0] - logits[:, -1].gather(
        1, ds.counterfactual_ids[:, None])[:, 0]
    torch.testing.assert_close(ds.logit_diff(per_prompt=True)(logits), hand)
    expected = []
    for i in range(len(ds)):
        last = dm(to_tokens(dm, ds.prompts[i]))[0, -1]
        expected.append(bool(last.argmax() == ds.answer_ids[i]))
    assert answer_correct(dm, ds, criterion="argmax", batch_size=4).tolist() == expected
    kept = keep_correct(dm, ds, criterion="argmax", verbose=False)
    assert kept.prompts == [p for p, e in zip(ds.prompts, expected) if e]
    assert kept.meta["keep_correct"]["kept"] == sum(expected) > 0
    assert torch.equal(kept.clean_tokens, ds.clean_tokens[torch.tensor(expected)])


def test_bad_options(dm):
    with pytest.raises(ValueError, match="Unknown operator"):
        arithmetic_problems(dm, ops=("/",))
    with pytest.raises(ValueError, match="digits must be 1 or 2"):
        arithmetic_problems(dm, digits=3)
    with pytest.raises(ValueError, match="template must be"):
        arithmetic_problems(dm, template="essay")
    with pytest.raises(ValueError, match="corruption must be"):
        arithmetic_problems(dm, corruption="noise")
    with pytest.raises(ValueError, match="only 45 distinct"):
        arithmetic_problems(dm, ops=("-",), n=46)
    with pytest.raises(ValueError, match="one operator per batch"):
        arithmetic_problems(dm, digits=2, template="few_shot")
    with pytest.raises(ValueError, match="tokenizer"):
        arithmetic_problems(tiny_model())
    with pytest.raises(ValueError, match="needs a dataset with candidate_ids"):
        keep_correct(dm, arithmetic_problems(dm, n=3), criterion="candidates")


def test_tokenizer_that_splits_numbers_oddly_is_an_error():
    model = digit_model(digit_pairs=True)  # "123" -> "12", "3": neither first digit nor whole
    with pytest.raises(ValueError, match="neither its first digit nor the whole number"):
        arithmetic_problems(model, ops=("*",), digits=2, n=10)


@pytest.mark.slow
def test_smollm2_tokenization(smollm2):
    ds = arithmetic_problems(smollm2, ops=("+",), digits=2, template="statement", n=10)
    tok = smollm2.tokenizer
    assert all(len(tok.decode([t])) == 1 for t in ds.answer_ids)  # first digits
    assert tok.decode([ds.clean_tokens[0, -1]]) == " "  # the space before the answer
    ds = arithmetic_problems(smollm2, ops=("+",), digits=1, template="few_shot", n=40)
    kept = keep_correct(smollm2, ds, criterion="argmax", verbose=False)
    logits = smollm2(kept.clean_tokens)[:, -1]
    assert (logits.argmax(-1) == kept.answer_ids).all()
