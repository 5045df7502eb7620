"""Course mode: every solution passes its checker, agrees with the package's own technique, and
every typical wrong answer is rejected with a message that says what differs.

The wrong answers are written as a student would write them (a hook, a slice, a sign), one per
mistake; ``WRONG`` lists every (exercise, mistake) pair, and each exercise's ``catches`` must
name exactly its mistakes here.
"""

from __future__ import annotations

import pytest
import torch
from hooks import assert_no_hooks

from workbench import course
from workbench.core.metrics import LogitDiff, normalise
from workbench.course import basics, lens, patching, paths, phenomena
from workbench.course import sae as csae
from workbench.course.base import tiny, tiny_gqa
from workbench.course.catalogue import WRONG
from workbench.course.catalogue.first import (
    dla_sign_flipped,
    heads_swapped,
    pattern_repeat_not_interleave,
    sweep_transposed,
)

EXERCISES = course.exercises()


# ============================================================================================
# The registry and its contract


def test_at_least_twenty_exercises_with_the_contract():
    assert len(EXERCISES) >= 20
    assert len({e.name for e in EXERCISES}) == len(EXERCISES)
    for e in EXERCISES:
        assert e.objective.endswith(".") and e.objective.count(". ") == 0, e.name
        assert 1 <= e.minutes <= 30 and e.difficulty in ("intro", "core", "advanced")
        assert e.notebook.startswith("course/") and callable(e.solution) and e.catches


def test_catches_lists_exactly_the_wrong_answers_tested_here():
    tested = {}
    for name, mistake, _ in WRONG:
        tested.setdefault(name, []).append(mistake)
    for e in EXERCISES:
        assert tested.get(e.name) == list(e.catches), e.name


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.name)
def test_solution_is_accepted(exercise):
    exercise.check(exercise.solution, allow_package=True)


@pytest.mark.parametrize("name, mistake, wrong", WRONG, ids=[f"{n}: {m}" for n, m, _ in WRONG])
def test_wrong_answer_is_rejected(name, mistake, wrong):
    seen = []

    def spy(*args, **kwargs):  # keeps the models the check handed over, to look for hooks after
        seen.extend(a for a in args if hasattr(a, "hook_dict"))
        return wrong(*args, **kwargs)

    with pytest.raises(AssertionError) as err:
        course.get(name).check(spy)
    assert name in str(err.value)
    for model in seen:
        assert_no_hooks(model)  # a check cleans up after a function that left a hook
    if "hook left" in mistake:
        assert "hook was left attached" in str(err.value)


def test_messages_name_the_index_and_the_values():
    with pytest.raises(AssertionError, match=r"layer=\d, head=\d: expected .*, got .*"):
        course.get("patch_head_outputs").check(heads_swapped, allow_package=True)
    with pytest.raises(AssertionError, match="opposite sign"):
        course.get("head_dla").check(dla_sign_flipped, allow_package=True)
    with pytest.raises(AssertionError, match=r"grouped-query model.*head=\d"):
        course.get("attention_pattern").check(pattern_repeat_not_interleave, allow_package=True)
    with pytest.raises(AssertionError, match="look transposed"):
        course.get("patch_resid_sweep").check(sweep_transposed, allow_package=True)


def test_a_student_error_is_reported_and_a_stub_raises_unchanged():
    def broken(q, k):
        return q @ k  # wrong shapes: raises inside the student's code

    with pytest.raises(AssertionError, match="attention_pattern .*raised RuntimeError"):
        course.get("attention_pattern").check(broken)

    def stub(q, k):
        raise NotImplementedError("attention_pattern: not written yet")

    with pytest.raises(NotImplementedError, match="not written yet"):
        course.get("attention_pattern").check(stub)


# ============================================================================================
# Each reference solution agrees with the package's own technique


@pytest.fixture(params=[tiny, tiny_gqa], ids=["tiny", "tiny_gqa"])
def model(request):
    return request.param()


def test_tokens_follow_the_package_rule():
    for adds in (True, False):
        tok = basics.LetterTokenizer(adds)
        assert torch.equal(basics.tokens_with_bos(tok, "Mary"), basics.to_tokens_reference(tok, "Mary"))


def test_scores_agree_with_heads(model):
    from workbench import heads

    tokens = torch.randint(1, 100, (3, 9), generator=torch.Generator().manual_seed(0))
    patterns = basics.patterns_of(model, tokens)
    prev = heads.previous_token_scores(model, tokens).values
    torch.testing.assert_close(torch.stack([basics.previous_token_score(p) for p in patterns]), prev)
    rep = heads.repeated_tokens(model, seq_len=7, batch=2, seed=1)
    ind = heads.induction_scores(model, seq_len=7, batch=2, seed=1).values
    got = torch.stack([basics.induction_score(p, 7) for p in basics.patterns_of(model, rep)])
    torch.testing.assert_close(got, ind)


def test_lens_and_dla_agree_with_lens(model):
    from workbench import dla as wd
    from workbench import lens as wl

    tokens, answers, wrong = lens.lens_case(0)
    by_hand = lens.logit_lens(model, tokens)  # [layer + 1, batch, d_vocab]
    r = wl.logit_lens(model, tokens, targets=answers, positions=[-1])
    torch.testing.assert_close(by_hand[:, torch.arange(3), answers], r.logit.values[..., 0],
                               atol=1e-4, rtol=1e-4)
    dla = wd.head_view(wd.direct_logit_attribution(model, tokens, LogitDiff(answers, wrong)))
    torch.testing.assert_close(lens.head_dla(model, tokens, answers, wrong), dla.values,
                               atol=1e-5, rtol=1e-4)


def test_patching_agrees_with_patching_and_attribution(model):
    from workbench import attribution as wa
    from workbench import patching as wp
    from workbench.core.metrics import Normalised

    clean, corrupted, metric = patching.patching_case(0)
    resid = wp.patch_resid(model, clean, corrupted, metric, progress=False).values
    torch.testing.assert_close(patching.patch_resid_sweep(model, clean, corrupted, metric), resid,
                               atol=1e-5, rtol=1e-4)
    assert patching.patch_one_site(model, clean, corrupted, metric, 1, 2) == pytest.approx(
        resid[1, 2].item(), abs=1e-5)
    head = wp.patch_heads(model, clean, corrupted, metric, progress=False).values
    torch.testing.assert_close(patching.patch_head_outputs(model, clean, corrupted, metric), head,
                               atol=1e-5, rtol=1e-4)
    attr = wa.attribute_heads(model, clean, corrupted, metric).values
    torch.testing.assert_close(patching.attribution_heads(model, clean, corrupted, metric), attr,
                               atol=1e-5, rtol=1e-4)
    n = Normalised(metric, 2.0, -1.0)
    logits = model(clean)
    assert n(logits).item() == pytest.approx(patching.normalise_metric(metric(logits).item(), 2.0, -1.0))


def test_paths_and_ablations_agree_with_the_package(model):
    from workbench import ablation, path_patching

    clean, corrupted, metric = patching.patching_case(1)
    for sender in [(0, 1), (1, 3)]:
        ref = path_patching.path_patch(model, clean, corrupted, metric, senders=[sender])
        assert paths.path_patch_logits(model, clean, corrupted, metric, sender) == pytest.approx(
            ref.item(), abs=1e-5)
    ref = path_patching.path_patch(model, clean, corrupted, metric, senders=[(0, 1)],
                                   receivers=[(1, 2)], receiver_input="q")
    assert paths.path_patch_query(model, clean, corrupted, metric, (0, 1), (1, 2)) == pytest.approx(
        ref.item(), abs=1e-5)
    tokens, reference, metric = paths.ablation_case(3)
    for kind, fn, extra in (("zero", paths.zero_ablate_head, ()),
                            ("mean", paths.mean_ablate_head, (reference,))):
        with ablation.ablate(model, heads=[(1, 2)], ablation=kind, reference=reference):
            expected = metric(model(tokens)).item()
        assert fn(model, tokens, metric, 1, 2, *extra) == pytest.approx(expected, abs=1e-5)
    circuit = [(0, 1), (1, 2)]
    f = ablation.faithfulness(model, tokens, metric, circuit, reference=reference, keep_mlps=True)
    assert paths.faithfulness(model, tokens, metric, circuit, reference) == pytest.approx(
        f.faithfulness, rel=1e-4)


def test_phenomena_agree_with_the_package(model):
    from workbench import heads, temporal
    from workbench import patching as wp
    from workbench.phenomena.arithmetic.analysis import operand_attention

    for seed in range(3):
        h = phenomena.haystack_case(seed)
        assert torch.equal(phenomena.retrieval_hits(model, h), heads.retrieval_hits(model, h)[0])
    ds = phenomena.year_case(0)
    ref = temporal.patch_each_head(model, ds, [(0, 1), (1, 2)], progress=False).values
    for layer, h in [(0, 1), (1, 2)]:
        assert phenomena.year_patch_head(model, ds, (layer, h)) == pytest.approx(
            ref[layer, h].item(), abs=1e-4)
    toy, ds = phenomena.toy_case()
    metric = normalise(toy, ds.clean_tokens, ds.corrupted_tokens, ds.logit_diff())
    ref = wp.patch_heads(toy, ds.clean_tokens, ds.corrupted_tokens, metric, progress=False).values[0]
    torch.testing.assert_close(phenomena.toy_operand_mover(toy, ds), ref, atol=1e-4, rtol=1e-4)
    ref = operand_attention(toy, ds).values[:, 0]  # [key_pos (A, B), head]
    torch.testing.assert_close(phenomena.toy_operand_attention(toy, ds.clean_tokens), ref)


def test_retrieval_case_is_not_trivial():
    """The check can only tell wrong from right if some heads hit and some do not."""
    hits = torch.stack([phenomena.retrieval_hits(m(), phenomena.haystack_case(s))
                        for m in (tiny, tiny_gqa) for s in range(3)])
    assert 0 < int((hits > 0).sum()) < hits.numel()


def test_sae_exercises_agree_with_sae(model):
    from workbench import sae as wsae

    sae = csae.course_sae(model)
    clean, corrupted, metric = patching.patching_case(2)
    clean[:, 0] = corrupted[:, 0] = 0
    torch.testing.assert_close(csae.sae_encode(sae, csae.sae_input(model, clean)),
                               wsae.encode(model, sae, clean))
    ref = wsae.attribute_features(model, clean, corrupted, metric, sae=sae).values
    torch.testing.assert_close(csae.feature_attribution(model, sae, clean, corrupted, metric), ref,
                               atol=1e-5, rtol=1e-4)


def test_a_raw_torch_hook_left_behind_fails_the_check_and_is_removed():
    seen = []

    def leaves_torch_hook(model, tokens, layer):
        seen.append(model)
        model.blocks[0].register_forward_hook(lambda module, args, out: None)
        return basics.resid_with_hook(model, tokens, layer)

    with pytest.raises(AssertionError, match=r"hook was left attached on blocks\.0"):
        course.get("resid_with_hook").check(leaves_torch_hook)
    assert seen
    assert_no_hooks(seen[0])


# ============================================================================================
# Checkers that cannot be fooled, and that diagnose


def _module_args(args):
    return [a for a in args if isinstance(a, torch.nn.Module)]


MODEL_EXERCISES = [e for e in EXERCISES if e.name not in
                   ("tokens_with_bos", "attention_pattern", "previous_token_score",
                    "induction_score", "logit_diff", "normalise_metric")]


def test_check_models_have_uneven_norms():
    for make in (tiny, tiny_gqa):
        w = make().ln_final.w
        assert (w - 1).abs().max() > 0.1


@pytest.mark.parametrize("exercise", MODEL_EXERCISES, ids=lambda e: e.name)
def test_an_in_place_weight_edit_is_rejected_and_undone(exercise):
    seen = []

    def edits_then_answers(*args):
        modules = _module_args(args)
        seen.append(modules)
        with torch.no_grad():
            next(modules[0].parameters()).mul_(0.5)
        return exercise.solution(*args)

    with pytest.raises(AssertionError, match="changed the model's weights in place"):
        exercise.check(edits_then_answers)
    assert seen


def test_an_edited_weight_is_restored():
    kept = []

    def zero_w_o(model, tokens, metric, layer, head):
        kept.append((model, model.blocks[layer].attn.W_O.detach().clone()))
        with torch.no_grad():
            model.blocks[layer].attn.W_O[head] = 0.0
        return metric(model(tokens)).item()

    with pytest.raises(AssertionError, match=r"weights in place \(blocks\.\d\.attn\.W_O"):
        course.get("zero_ablate_head").check(zero_w_o)
    model, before = kept[0]
    torch.testing.assert_close(model.blocks[0].attn.W_O, before)


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.name)
def test_the_reference_imported_from_the_package_scores_zero(exercise):
    with pytest.raises(AssertionError, match="imported from the workbench package"):
        exercise.check(exercise.solution)
    log = exercise.report(exercise.solution)
    assert log.failed and not log.passed


def test_a_failure_names_the_typical_wrong_answer_it_equals():
    def swapped(value, clean, corrupted):  # written in the student's own module
        return (value - clean) / (corrupted - clean)

    with pytest.raises(AssertionError, match="typical wrong answer: clean and corrupted swapped"):
        course.get("normalise_metric").check(swapped)

    def no_weight(model, tokens, answers, wrong):
        from workbench.course.catalogue.first import dla_no_norm_weight

        return dla_no_norm_weight(model, tokens, answers, wrong)

    with pytest.raises(AssertionError, match="typical wrong answer: the final norm's weight"):
        course.get("head_dla").check(no_weight)


def test_each_case_has_a_verdict_and_numpy_is_a_warning_not_a_failure():
    def right_on_the_tiny_model_only(q, k):
        out = basics.attention_pattern(q, k)
        return out if q.shape[2] == k.shape[2] else out * 0.5

    log = course.get("attention_pattern").report(right_on_the_tiny_model_only)
    assert log.passed == ["tiny model, layer 0", "tiny model, layer 1"]
    assert len(log.failed) == 2 and "Cases: 2 of 4 passed" in log.summary()

    def as_numpy(q, k):
        return basics.attention_pattern(q, k).numpy()

    with pytest.warns(course.CourseWarning, match="returns a ndarray"):
        course.get("attention_pattern").check(as_numpy)


@pytest.mark.parametrize("name, mistake", [
    ("logit_lens", "each block's ln1 instead of ln_final"),
    ("logit_lens", "forgetting the final norm"),
    ("head_dla", "the final norm's weight ln_final.w forgotten"),
    ("head_dla", "forgetting the final norm"),
])
def test_a_wrong_norm_is_rejected_and_named(name, mistake):
    wrong = dict(course.catalogue.mistakes(name))[mistake]

    def student(*args):  # the mistake, written in the student's own module
        return wrong(*args)

    with pytest.raises(AssertionError, match="differs from the reference") as err:
        course.get(name).check(student)
    assert f"typical wrong answer: {mistake}" in str(err.value)
