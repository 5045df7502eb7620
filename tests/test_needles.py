"""Needle-in-a-haystack prompts: exact lengths, needle depth, seeding, validation."""

import re
from types import SimpleNamespace

import pytest
import torch

from workbench.phenomena import Haystack, Needle, needle_haystacks
from workbench.phenomena.retrieval.dataset import FILLER_PATH, load_filler


class CharTokenizer:
    """One token per character (id = code point + 10), BOS = 1: fast, and no tokenizer files."""

    bos_token_id = 1
    pad_token_id = 0
    eos_token_id = 2

    def encode(self, text, add_special_tokens=False):
        return [ord(c) + 10 for c in text]

    def decode(self, ids):
        return "".join("<bos>" if i == 1 else chr(i - 10) for i in ids)


@pytest.fixture
def char_model():
    return SimpleNamespace(tokenizer=CharTokenizer(), cfg=SimpleNamespace(model_name="chars"))


def test_filler_constraints():
    text = FILLER_PATH.read_text()
    assert not re.search(r"\d", text)
    assert not re.search(r"secret|code", text, re.IGNORECASE)
    assert len(text.split()) > 3000
    assert "\n" not in load_filler()


def test_exact_lengths_depths_and_spans(char_model):
    hs = needle_haystacks(char_model, context_lengths=(300, 700), depths=(0.0, 0.25, 0.5, 1.0), n_per=2)
    assert len(hs) == 2 * 4 * 2
    assert [(h.context_length, h.depth) for h in hs[:3]] == [(300, 0.0), (300, 0.0), (300, 0.25)]
    tok = char_model.tokenizer
    snapped = 0
    for h in hs:
        assert h.tokens.shape == (1, h.context_length)
        assert h.tokens[0, 0] == 1 and (h.tokens[0, 1:] != 1).all()  # exactly one BOS, first
        s, e = h.needle_span
        code = h.meta["code"]
        assert tok.decode(h.tokens[0, s:e].tolist()) == f" The secret code is {code}."
        assert tok.decode(h.answer_ids.tolist()) == f" {code}" == h.answer
        a, b = h.answer_span
        assert torch.equal(h.tokens[0, a:b], h.answer_ids)
        text = tok.decode(h.tokens[0].tolist())
        assert text.endswith("\n\nWhat is the secret code? The secret code is")
        assert text.count(code) == 1
        n_filler = h.meta["n_filler"]
        assert n_filler == h.context_length - 1 - (e - s) - len(tok.encode(Needle().question))
        assert h.needle_depth == pytest.approx((s - 1) / n_filler)
        assert abs(h.needle_depth - h.depth) <= 24 / n_filler + 1e-9  # snapped at most 24 tokens
        # the needle follows a sentence end, or (none within 24 tokens) sits exactly at the depth
        after_sentence = tok.decode([int(h.tokens[0, s - 1])]) in ".!?"
        assert after_sentence or s - 1 in (0, n_filler, round(h.depth * n_filler))
        snapped += after_sentence
        assert h.full_tokens.shape == (1, h.context_length + len(h.answer_ids))
    assert snapped >= 4


def test_no_snap_puts_needle_exactly(char_model):
    for h in needle_haystacks(char_model, context_lengths=(333,), depths=(0.1, 0.37, 0.9), n_per=1, snap=0):
        n = h.meta["n_filler"]
        assert h.needle_span[0] == 1 + round(h.depth * n)


def test_seeded(char_model):
    a = needle_haystacks(char_model, context_lengths=(300,), depths=(0.5,), n_per=3, seed=7)
    b = needle_haystacks(char_model, context_lengths=(300,), depths=(0.5,), n_per=3, seed=7)
    c = needle_haystacks(char_model, context_lengths=(300,), depths=(0.5,), n_per=3, seed=8)
    assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(a, b))
    assert not all(torch.equal(x.tokens, y.tokens) for x, y in zip(a, c))
    assert len({h.meta["code"] for h in a}) == 3  # repeats differ
    # Another length or depth does not change this one.
    d = needle_haystacks(char_model, context_lengths=(300, 500), depths=(0.5, 0.9), n_per=3, seed=7)
    assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(a, d[:3]))


def test_custom_needle(char_model):
    n = Needle(sentence=" The door code is {code}.", question=" Door code:", answer=" {code}", code_digits=6)
    (h,) = needle_haystacks(char_model, context_lengths=(200,), depths=(0.5,), n_per=1, needle=n)
    assert len(h.meta["code"]) == 6 and h.tokens.shape == (1, 200)


def test_errors(char_model):
    with pytest.raises(ValueError, match="too short"):
        needle_haystacks(char_model, context_lengths=(50,), depths=(0.5,))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        needle_haystacks(char_model, depths=(1.5,))
    with pytest.raises(ValueError, match="n_per"):
        needle_haystacks(char_model, n_per=0)
    with pytest.raises(TypeError, match="Needle"):
        needle_haystacks(char_model, needle=("a", "b", "c"))
    with pytest.raises(ValueError, match="code"):
        Needle(sentence="No placeholder.")
    with pytest.raises(ValueError, match="contiguous"):
        bad = Needle(sentence=" The code is {code}.", answer=" code {code}")
        needle_haystacks(char_model, context_lengths=(300,), depths=(0.5,), n_per=1, needle=bad)
    with pytest.warns(UserWarning, match="repeats"):
        needle_haystacks(char_model, context_lengths=(30000,), depths=(0.5,), n_per=1)


def test_haystack_validation():
    t = torch.arange(10)[None]
    with pytest.raises(ValueError, match=r"\[1, pos\]"):
        Haystack(tokens=torch.arange(10), needle_span=(1, 3), answer_span=(1, 2), answer_ids=[1])
    with pytest.raises(ValueError, match="needle_span"):
        Haystack(tokens=t, needle_span=(5, 12), answer_span=(5, 6), answer_ids=[5])
    with pytest.raises(ValueError, match="not inside"):
        Haystack(tokens=t, needle_span=(1, 3), answer_span=(5, 6), answer_ids=[5])
    with pytest.raises(ValueError, match="are not answer_ids"):
        Haystack(tokens=t, needle_span=(1, 6), answer_span=(4, 6), answer_ids=[4, 9])
    with pytest.raises(ValueError, match="empty"):
        Haystack(tokens=t, needle_span=(1, 6), answer_span=(4, 6), answer_ids=[])
    with pytest.raises(ValueError, match="context_length"):
        Haystack(tokens=t, needle_span=(1, 6), answer_span=(4, 6), answer_ids=[4, 5], context_length=11)
    h = Haystack(tokens=t, needle_span=(1, 6), answer_span=(4, 6), answer_ids=[4, 5])
    assert h.context_length == 10 and h.n_answer == 2


@pytest.mark.slow
def test_smollm2_haystacks_exact_and_answered(smollm2):
    from workbench import heads

    hs = needle_haystacks(smollm2, context_lengths=(100, 300), depths=(0.2, 0.8), n_per=1)
    for h in hs:
        assert h.tokens.shape == (1, h.context_length)
        assert smollm2.tokenizer.decode(h.answer_ids.tolist()) == h.answer
    r = heads.retrieval_scores(smollm2, hs, progress=False)
    assert r.meta["n_answered"] == 4, r.meta["answered"]
