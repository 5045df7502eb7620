"""Temporal fact prompts: tokenization claims, counterfactuals, seeding, errors, keep_correct.

Fast tests use the tiny model with a small word-level tokenizer that, like SmolLM2 and Gemma,
writes digits one by one and splits the space before a digit off as its own token.
"""

import re

import pytest
import torch
from hooks import assert_no_hooks

from workbench.models import tiny_model, to_tokens
from workbench.phenomena.answers import answer_correct, first_answer_token, keep_correct
from workbench.phenomena.temporal.dataset import facts_frame, load_facts, temporal_facts


class WordTokenizer:
    """Words keep their leading space; digits, spaces before digits and punctuation stand alone.

    ``chars=True`` makes every character a token (so " Bill" starts with a bare space);
    ``digit_pairs=True`` writes numbers in chunks of two digits ("1995" -> "19", "95").
    """

    def __init__(self, *, chars: bool = False, digit_pairs: bool = False):
        digits = r"\d\d|\d" if digit_pairs else r"\d"
        self.pattern = re.compile(r"(?s)." if chars else rf" ?[^\W\d_]+|{digits}| |\n|[^\w\s]")
        self.vocab = {"<bos>": 0, "<pad>": 1}
        self.bos_token_id, self.pad_token_id, self.eos_token_id = 0, 1, 1
        self.padding_side = "right"  # read by HookedTransformer.forward

    def encode(self, text, add_special_tokens=False):
        pieces = self.pattern.findall(text)
        assert "".join(pieces) == text, "the fake tokenizer must cover the whole text"
        return [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]

    def decode(self, ids):
        inverse = {i: p for p, i in self.vocab.items()}
        return "".join(inverse[int(i)] for i in ids)


def word_model(**kwargs):
    model = tiny_model(d_vocab=3000, d_model=32)
    model.tokenizer = WordTokenizer(**kwargs)
    return model


@pytest.fixture
def wm():
    return word_model()


# --------------------------------------------------------------------------------------------
# The fact table


def test_fact_table_is_big_enough_and_well_formed():
    df = facts_frame()
    assert (df.kind == "temporal").sum() >= 60 and (df.kind == "invariant").sum() >= 40
    temporal = df[df.kind == "temporal"]
    assert temporal.year.notna().all() and df[df.kind == "invariant"].year.isna().all()
    # One object per (relation, subject, year): a fact table, not a guess list.
    assert not temporal.duplicated(["relation", "subject", "year"]).any()
    assert all("{time}" in t and "{subject}" in t for t in df.template)
    # Spot checks against public knowledge.
    pick = temporal.set_index(["relation", "year"]).object
    assert pick[("us_president", 1995)] == "Bill Clinton"
    assert pick[("world_cup_winner", 2010)] == "Spain"
    assert pick[("olympics_host", 2004)] == "Athens"
    _, aliases = load_facts()
    assert ("the year the Berlin Wall fell", 1989, ()) in aliases


# --------------------------------------------------------------------------------------------
# Generation with a word tokenizer


def test_temporal_prompts_answers_and_counterfactuals(wm):
    ds = temporal_facts(wm, kind="temporal", seed=0)
    tok = wm.tokenizer
    df = facts_frame().query("kind == 'temporal'")
    table = {(r.relation, r.year): r.object for r in df.itertuples()}
    assert len(ds) >= 60 and ds.clean_tokens.shape == ds.corrupted_tokens.shape
    assert (ds.answer_ids != ds.counterfactual_ids).all()
    for i in range(len(ds)):
        rel, year, cyear = ds.relations[i], int(ds.years[i]), int(ds.corrupted_years[i])
        assert ds.answers[i] == " " + table[(rel, year)]
        assert ds.counterfactual_answers[i] == " " + table[(rel, cyear)]  # same subject, other year
        assert year != cyear and ds.corrupted_prompts[i] == ds.prompts[i].replace(str(year), str(cyear))
        # The answer id is the first token after the prompt in the joint tokenization.
        p = tok.encode(ds.prompts[i])
        assert ds.answer_ids[i] == tok.encode(ds.prompts[i] + ds.answers[i])[len(p)]
        assert ds.counterfactual_ids[i] == tok.encode(ds.prompts[i] + ds.counterfactual_answers[i])[len(p)]
        # Tokens: BOS + prompt, padded; END is the last prompt token.
        end = int(ds.pos["END"][i])
        assert ds.clean_tokens[i, : end + 1].tolist() == [0, *p]
        assert (ds.clean_tokens[i, end + 1:] == tok.pad_token_id).all()
        # The time span decodes to the year, and it is the only place clean and corrupted differ.
        s, e = int(ds.pos["TIME_START"][i]), int(ds.pos["TIME"][i])
        assert tok.decode(ds.clean_tokens[i, s : e + 1]) == str(year)
        differ = (ds.clean_tokens[i] != ds.corrupted_tokens[i]).nonzero().flatten()
        assert differ.numel() > 0 and s <= differ.min() and differ.max() <= e


def test_candidates_are_every_object_of_the_relation(wm):
    ds = temporal_facts(wm, relations=["us_president"])
    tok = wm.tokenizer
    names = {" " + o.split()[0] for o in facts_frame().query("relation == 'us_president'").object}
    for i in range(len(ds)):
        got = {tok.decode([c]) for c in ds.candidate_ids[i]}
        assert got == names and int(ds.answer_ids[i]) in ds.candidate_ids[i].tolist()
        assert int(ds.counterfactual_ids[i]) in ds.candidate_ids[i].tolist()


def test_invariant_prompts_change_only_the_year(wm):
    ds = temporal_facts(wm, kind="invariant", seed=1)
    df = facts_frame().query("kind == 'invariant'")
    assert len(ds) >= 40 and (ds.answer_ids != ds.counterfactual_ids).all()
    for i in range(len(ds)):
        objects = {" " + o for o in df[df.relation == ds.relations[i]].object}
        assert ds.answers[i] in objects and ds.counterfactual_answers[i] in objects
        assert ds.counterfactual_answers[i] != ds.answers[i]
        assert ds.corrupted_prompts[i] == ds.prompts[i].replace(
            str(int(ds.years[i])), str(int(ds.corrupted_years[i])))
        assert ds.years[i] != ds.corrupted_years[i] and 1950 <= ds.years[i] <= 2023


def test_alias_prompts(wm):
    ds = temporal_facts(wm, kind="temporal", time_format="alias", seed=0)
    _, aliases = load_facts()
    by_text = {a[0]: a for a in aliases}
    assert len(ds) >= 30
    for i in range(len(ds)):
        text = ds.prompts[i].removeprefix("In ").split(",")[0]
        alias = by_text[text]
        assert alias[1] == ds.years[i] and ds.relations[i] not in alias[2]
        s, e = int(ds.pos["TIME_START"][i]), int(ds.pos["TIME"][i])
        assert wm.tokenizer.decode(ds.clean_tokens[i, s : e + 1]).strip() == text


def test_seeded_and_sampled(wm):
    a = temporal_facts(wm, seed=3)
    b = temporal_facts(wm, seed=3)
    c = temporal_facts(wm, seed=4)
    assert a.prompts == b.prompts and torch.equal(a.corrupted_tokens, b.corrupted_tokens)
    assert a.corrupted_prompts != c.corrupted_prompts  # other counterfactual years
    assert all(torch.equal(x, y) for x, y in zip(a.candidate_ids, b.candidate_ids))
    s1, s2 = temporal_facts(wm, n=10, seed=5), temporal_facts(wm, n=10, seed=5)
    assert len(s1) == 10 and s1.prompts == s2.prompts


def test_one_relation_gives_one_length_and_subsets_stay_consistent(wm):
    ds = temporal_facts(wm, relations=["us_president"])
    assert set(ds.relations) == {"us_president"} and (ds.pos["END"] == ds.clean_tokens.shape[1] - 1).all()
    full = temporal_facts(wm)
    groups = full.by_length()
    assert sum(len(g) for g in groups.values()) == len(full)
    for n, g in groups.items():
        assert g.clean_tokens.shape[1] == n and (g.pos["END"] == n - 1).all()
        assert torch.equal(g.clean_tokens, to_tokens(wm, g.prompts))
    sub = full.subset([2, 0])
    assert sub.prompts == [full.prompts[2], full.prompts[0]] and sub.answer_ids.tolist() == [
        full.answer_ids[2].item(), full.answer_ids[0].item()]


def test_logit_diff_matches_hand_computation(wm):
    ds = temporal_facts(wm, n=12, seed=0)
    logits = wm(ds.clean_tokens)
    rows = torch.arange(len(ds))
    last = logits[rows, ds.pos["END"]]
    hand = last[rows, ds.answer_ids] - last[rows, ds.counterfactual_ids]
    torch.testing.assert_close(ds.logit_diff(per_prompt=True)(logits), hand)
    torch.testing.assert_close(ds.logit_diff()(logits), hand.mean())


# --------------------------------------------------------------------------------------------
# keep_correct


@pytest.mark.parametrize("criterion", ["logit_diff", "argmax", "candidates", "both"])
def test_keep_correct_matches_a_plain_loop(wm, criterion, capsys):
    ds = temporal_facts(wm, n=30, seed=0)
    # A model that "knows" a few answers: a large output bias on three answer tokens makes them
    # the top prediction everywhere, so exactly the facts with those answers pass "argmax".
    with torch.no_grad():
        wm.b_U[ds.answer_ids[:3]] += 50.0
    expected = []
    for i in range(len(ds)):  # reference: one prompt at a time, from its own text
        logits = wm(to_tokens(wm, ds.prompts[i]))[0, -1]
        beats = bool(logits[ds.answer_ids[i]] > logits[ds.counterfactual_ids[i]])
        top = bool(logits.argmax() == ds.answer_ids[i])
        rivals = [c for c in ds.candidate_ids[i].tolist() if c != ds.answer_ids[i]]
        best = all(logits[ds.answer_ids[i]] > logits[c] for c in rivals)
        expected.append({"logit_diff": beats, "argmax": top, "candidates": best,
                         "both": beats and top}[criterion])
    ok = answer_correct(wm, ds, criterion=criterion, batch_size=7)
    assert ok.tolist() == expected
    assert 0 < sum(expected) < len(ds)
    kept = keep_correct(wm, ds, criterion=criterion)
    assert kept.prompts == [p for p, e in zip(ds.prompts, expected) if e]
    report = kept.meta["keep_correct"]
    assert report["kept"] == sum(expected) and report["of"] == len(ds)
    assert f"kept {sum(expected)} of {len(ds)}" in capsys.readouterr().out
    assert_no_hooks(wm)


def test_keep_correct_with_nothing_correct_is_an_error(wm):
    ds = temporal_facts(wm, n=5, seed=0)
    with torch.no_grad():  # logits = b_U: every counterfactual scores 1, every other token 0
        wm.W_U.zero_()
        wm.b_U.zero_()
        wm.b_U[ds.counterfactual_ids] = 1.0
    with pytest.raises(ValueError, match="nothing to keep"):
        keep_correct(wm, ds)


# --------------------------------------------------------------------------------------------
# Errors


def test_bad_options(wm):
    with pytest.raises(ValueError, match="kind must be"):
        temporal_facts(wm, kind="timeless")
    with pytest.raises(ValueError, match="time_format must be"):
        temporal_facts(wm, time_format="decade")
    with pytest.raises(ValueError, match="Unknown temporal relation"):
        temporal_facts(wm, relations=["capital"])  # an invariant relation asked as temporal
    with pytest.raises(ValueError, match="n must be between"):
        temporal_facts(wm, n=10_000)
    with pytest.raises(ValueError, match="tokenizer"):
        temporal_facts(tiny_model())
    with pytest.raises(ValueError, match="criterion must be"):
        keep_correct(wm, temporal_facts(wm, n=3), criterion="vibes")


def test_tokenizer_that_splits_the_answer_space_is_an_error():
    with pytest.raises(ValueError, match="whitespace-only token"):
        temporal_facts(word_model(chars=True))


def test_first_answer_token_rejects_merges():
    class Merging(WordTokenizer):
        def encode(self, text, add_special_tokens=False):  # "was Bill" becomes one token
            return super().encode(text.replace("was Bill", "wasBill"))

    model = tiny_model(d_vocab=3000, d_model=32)
    model.tokenizer = Merging()
    with pytest.raises(ValueError, match="merges the end"):
        first_answer_token(model, "In 1995, the president was", " Bill")


def test_years_of_another_token_length_are_not_mixed():
    model = word_model(digit_pairs=True)  # "1995" -> "19", "95": still one length for all years
    ds = temporal_facts(model, relations=["olympics_host"])
    assert (ds.pos["TIME"] - ds.pos["TIME_START"] == 1).all()


# --------------------------------------------------------------------------------------------
# The offline model


@pytest.mark.slow
def test_smollm2_tokenization_and_kept_facts(smollm2):
    ds = temporal_facts(smollm2, kind="temporal", relations=["us_president"])
    tok = smollm2.tokenizer
    i = ds.prompts.index("In 1995, the president of the United States was")
    assert tok.decode([ds.answer_ids[i]]) == " Bill"
    # Years are four single digits after a separate space token.
    s, e = int(ds.pos["TIME_START"][i]), int(ds.pos["TIME"][i])
    assert [tok.decode([t]) for t in ds.clean_tokens[i, s - 1 : e + 1]] == [" ", "1", "9", "9", "5"]
    # Relations SmolLM2 knows best (measured: 22 of 71 pass "candidates").
    ds = temporal_facts(smollm2, relations=["pope", "german_chancellor", "uk_prime_minister"])
    kept = keep_correct(smollm2, ds, criterion="candidates", verbose=False)
    assert kept.meta["keep_correct"]["kept"] >= 15
    # Every kept fact is answered right by the criterion, checked one prompt at a time.
    for j in range(0, len(kept), 5):
        logits = smollm2(to_tokens(smollm2, kept.prompts[j]))[0, -1]
        rivals = [c for c in kept.candidate_ids[j].tolist() if c != kept.answer_ids[j]]
        assert (logits[kept.answer_ids[j]] > logits[rivals]).all()


@pytest.mark.slow
def test_smollm2_mid_model_runs_equal_full_forwards_on_padded_batches(smollm2):
    """patch_each_head starts each run at its head's layer; on right-padded prompts of several
    lengths (three relations) that must give what full forwards give."""
    from workbench import temporal as tp
    from workbench.models import logits_at

    ds = temporal_facts(smollm2, relations=["pope", "german_chancellor", "world_cup_winner"]).subset(
        range(0, 30, 3))
    assert len(set(ds.pos["END"].tolist())) > 1  # really padded
    rows = torch.arange(len(ds))
    torch.testing.assert_close(logits_at(smollm2, ds.clean_tokens, ds.pos["END"]),
                               smollm2(ds.clean_tokens)[rows, ds.pos["END"]], atol=1e-4, rtol=0)
    heads = [(3, 2), (17, 4)]
    source = tp._z_cache(smollm2, ds.clean_tokens, [3, 17], 4)
    resid = tp._cache(smollm2, ds.corrupted_tokens, "hook_resid_pre", [3, 17], 4)
    for layer, h in heads:
        full = tp._edited_logits(smollm2, ds.corrupted_tokens, ds.pos["END"], source, [(layer, h)], 1.0, 4)
        mid = tp._edited_logits(smollm2, ds.corrupted_tokens, ds.pos["END"], source, [(layer, h)], 1.0, 4,
                                resid_pre=resid[layer])
        torch.testing.assert_close(mid, full, atol=1e-4, rtol=0)
