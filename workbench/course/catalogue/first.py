"""Typical wrong answers to exercises 1-13, written as a student would write them.

The checkers run these on a failing case to name the mistake a student's result matches; the tests
assert that each one is rejected. One function per mistake; ``WRONG`` lists (exercise, mistake as in
its ``catches``, function).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from workbench.core.types import HookList, Model
from workbench.course import lens


def tokens_missing_bos(tokenizer, text):
    return torch.tensor([tokenizer.encode(text)])  # SmolLM2's tokenizer adds no BOS


def tokens_doubled_bos(tokenizer, text):
    return torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(text)]])  # Gemma's adds one


def tokens_1d(tokenizer, text):
    return torch.tensor([tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False)])


def resid_post_instead(model: Model, tokens, layer):
    _, cache = model.run_with_cache(tokens)
    return cache[f"blocks.{layer}.hook_resid_post"]


def resid_hook_left(model: Model, tokens, layer):
    stored: dict[str, object] = {}
    model.add_hook(f"blocks.{layer}.hook_resid_pre", lambda a, hook: stored.update(r=a.clone()))
    model(tokens)
    return stored["r"]


def _scores(q, k, scale=True, group_fn="interleave"):
    group = q.shape[2] // k.shape[2]
    if group_fn == "interleave":
        k = k.repeat_interleave(group, dim=2)
    else:
        k = k.repeat(1, 1, group, 1)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k)
    return s / q.shape[-1] ** 0.5 if scale else s


def _mask(s):
    n = s.shape[-1]
    return s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))


def pattern_softmax_query_dim(q, k):
    return _mask(_scores(q, k)).softmax(dim=-2)


def pattern_no_mask(q, k):
    return _scores(q, k).softmax(dim=-1)


def pattern_no_scale(q, k):
    return _mask(_scores(q, k, scale=False)).softmax(dim=-1)


def pattern_repeat_not_interleave(q, k):
    return _mask(_scores(q, k, group_fn="repeat")).softmax(dim=-1)


def prev_self_attention(pattern):
    return pattern.diagonal(offset=0, dim1=-2, dim2=-1).mean(dim=(0, 2))


def prev_query_key_swapped(pattern):
    return pattern.diagonal(offset=1, dim1=-2, dim2=-1).mean(dim=(0, 2))


def prev_mean_over_all_queries(pattern):
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).sum(dim=2).mean(0) / pattern.shape[-1]


def induction_duplicate_offset(pattern, seq_len):
    return pattern.diagonal(offset=-seq_len, dim1=-2, dim2=-1)[..., 1:].mean(dim=(0, 2))


def induction_forgot_bos(pattern, seq_len):
    # queries seq_len .. 2 * seq_len - 1 (as if position 0 were r[0]), same offset
    return pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)[..., 1:-1].mean(dim=(0, 2))


def induction_all_queries(pattern, seq_len):
    return pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1).mean(dim=(0, 2))


def ld_sign_flipped(logits, answers, wrong):
    return -lens.logit_diff(logits, answers, wrong)


def ld_second_to_last(logits, answers, wrong):
    rows = torch.arange(len(answers))
    return (logits[rows, -2, answers] - logits[rows, -2, wrong]).mean()


def ld_summed(logits, answers, wrong):
    rows = torch.arange(len(answers))
    return (logits[rows, -1, answers] - logits[rows, -1, wrong]).sum()


def _lens_resid(model: Model, tokens, post=False):
    n = model.cfg.n_layers
    kind = "post" if post else "pre"
    names = [f"blocks.{layer}.hook_resid_{kind}" for layer in range(n)]
    if not post:
        names.append(f"blocks.{n - 1}.hook_resid_post")
    _, cache = model.run_with_cache(tokens)
    return torch.stack([cache[name][:, -1] for name in names])


def lens_no_final_norm(model: Model, tokens):
    return model.unembed(_lens_resid(model, tokens))


def lens_resid_post(model: Model, tokens):
    return model.unembed(model.ln_final(_lens_resid(model, tokens, post=True)))


def lens_block_ln1(model: Model, tokens):
    n = model.cfg.n_layers
    resid = _lens_resid(model, tokens)
    normed = [model.blocks[min(i, n - 1)].ln1(r) for i, r in enumerate(resid)]  # each block's norm
    return model.unembed(torch.stack(normed))


def lens_no_unembed_bias(model: Model, tokens):
    return model.ln_final(_lens_resid(model, tokens)) @ model.W_U


def _dla(model: Model, tokens, answers, wrong, *, norm=True, centre=True, sign=1.0, weight=True):
    _, cache = model.run_with_cache(tokens)
    direction = (model.W_U[:, answers] - model.W_U[:, wrong]).T
    scale = cache["ln_final.hook_scale"][:, -1] if norm else torch.ones(len(tokens), 1)
    if norm and weight:
        direction = direction * cast(torch.Tensor, model.ln_final.w)
    out = []
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][:, -1]
        h = torch.einsum("bhd,hdm->bhm", z, model.W_O[layer])
        if centre and norm and model.cfg.normalization_type == "LN":
            h = h - h.mean(-1, keepdim=True)
        out.append(torch.einsum("bhm,bm->bh", h / scale[:, :, None], direction).mean(0))
    return sign * torch.stack(out)


def dla_no_final_norm(model: Model, tokens, answers, wrong):
    return _dla(model, tokens, answers, wrong, norm=False)


def dla_no_norm_weight(model: Model, tokens, answers, wrong):
    return _dla(model, tokens, answers, wrong, weight=False)


def dla_sign_flipped(model: Model, tokens, answers, wrong):
    return _dla(model, tokens, answers, wrong, sign=-1.0)


def dla_not_centred(model: Model, tokens, answers, wrong):
    return _dla(model, tokens, answers, wrong, centre=False)


def normalise_swapped(value, clean, corrupted):
    return (value - clean) / (corrupted - clean)


def normalise_by_clean(value, clean, corrupted):
    return value / clean


def _patch_resid(model: Model, source, target, metric, layer, pos, *, kind="pre", all_pos=False):
    name = f"blocks.{layer}.hook_resid_{kind}"
    _, cache = model.run_with_cache(source)

    def hook(resid, hook):
        if all_pos:
            return cache[name]
        resid[:, pos] = cache[name][:, pos]
        return resid

    with model.hooks(fwd_hooks=[(name, hook)]):
        return metric(model(target)).item()


def one_site_swapped(model: Model, clean, corrupted, metric, layer, pos):
    return _patch_resid(model, corrupted, clean, metric, layer, pos)


def one_site_off_by_one(model: Model, clean, corrupted, metric, layer, pos):
    return _patch_resid(model, clean, corrupted, metric, layer, pos + 1)


def one_site_every_position(model: Model, clean, corrupted, metric, layer, pos):
    return _patch_resid(model, clean, corrupted, metric, layer, pos, all_pos=True)


def one_site_hook_left(model: Model, clean, corrupted, metric, layer, pos):
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = model.run_with_cache(clean)

    def hook(resid, hook):
        resid[:, pos] = cache[name][:, pos]
        return resid

    model.add_hook(name, hook)
    return metric(model(corrupted)).item()


def _sweep(model: Model, clean, corrupted, metric, **kw):
    out = torch.zeros(model.cfg.n_layers, clean.shape[1])
    for layer in range(model.cfg.n_layers):
        for pos in range(clean.shape[1]):
            out[layer, pos] = _patch_resid(model, clean, corrupted, metric, layer, pos, **kw)
    return out


def sweep_swapped(model: Model, clean, corrupted, metric):
    return _sweep(model, corrupted, clean, metric)


def sweep_transposed(model: Model, clean, corrupted, metric):
    return _sweep(model, clean, corrupted, metric).T


def sweep_resid_post(model: Model, clean, corrupted, metric):
    return _sweep(model, clean, corrupted, metric, kind="post")


def _patch_heads(model: Model, source, target, metric, *, index="head", last_only=False):
    _, cache = model.run_with_cache(source)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        for head in range(model.cfg.n_heads):
            def hook(z, hook, head=head):
                source = cache[hook.name]
                if index == "pos":
                    z[:, head] = source[:, head]
                elif last_only:
                    z[:, -1, head] = source[:, -1, head]
                else:
                    z[:, :, head] = source[:, :, head]
                return z

            with model.hooks(fwd_hooks=[(name, hook)]):
                out[layer, head] = metric(model(target)).item()
    return out


def heads_swapped(model: Model, clean, corrupted, metric):
    return _patch_heads(model, corrupted, clean, metric)


def heads_position_axis(model: Model, clean, corrupted, metric):
    return _patch_heads(model, clean, corrupted, metric, index="pos")


def heads_last_position_only(model: Model, clean, corrupted, metric):
    return _patch_heads(model, clean, corrupted, metric, last_only=True)


def _attribution(model: Model, clean, corrupted, metric, *, sign=1.0, grad_on="corrupted", baseline=True):
    at, other = (corrupted, clean) if grad_on == "corrupted" else (clean, corrupted)
    _, other_cache = model.run_with_cache(other)
    zs = {}

    def keep(z, hook):
        zs[hook.name] = z
        return z

    def leaf(resid, hook):
        return resid.detach().requires_grad_(True)

    hooks: HookList = [("blocks.0.hook_resid_pre", leaf), (lambda n: n.endswith("hook_z"), keep)]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = metric(model(at))
        grads = torch.autograd.grad(value, list(zs.values()))
    delta = torch.stack([(g * sign * (other_cache[n] - zs[n].detach())).sum(dim=(0, 1, 3))
                         for n, g in zip(zs, grads)])
    return delta + value.detach() if baseline else delta


def attribution_sign_flipped(model: Model, clean, corrupted, metric):
    return _attribution(model, clean, corrupted, metric, sign=-1.0)


def attribution_grad_on_clean(model: Model, clean, corrupted, metric):
    return _attribution(model, clean, corrupted, metric, grad_on="clean")


def attribution_no_baseline(model: Model, clean, corrupted, metric):
    return _attribution(model, clean, corrupted, metric, baseline=False)


WRONG: list[tuple[str, str, Callable[..., Any]]] = [
    ("tokens_with_bos", "missing BOS", tokens_missing_bos),
    ("tokens_with_bos", "doubled BOS", tokens_doubled_bos),
    ("tokens_with_bos", "1-d tensor instead of [1, pos]", tokens_1d),
    ("resid_with_hook", "off-by-one layer (resid_post)", resid_post_instead),
    ("resid_with_hook", "hook left attached", resid_hook_left),
    ("attention_pattern", "softmax over the query dim", pattern_softmax_query_dim),
    ("attention_pattern", "no causal mask", pattern_no_mask),
    ("attention_pattern", "no 1/sqrt(d_head) scale", pattern_no_scale),
    ("attention_pattern",
     "wrong head axis on a grouped-query model (repeat, not repeat_interleave)",
     pattern_repeat_not_interleave),
    ("previous_token_score", "off-by-one (attention to itself)", prev_self_attention),
    ("previous_token_score", "query and key swapped", prev_query_key_swapped),
    ("previous_token_score", "mean taken over every position, BOS query included",
     prev_mean_over_all_queries),
    ("induction_score", "duplicate-token offset (the earlier copy itself)", induction_duplicate_offset),
    ("induction_score", "BOS forgotten in the offset", induction_forgot_bos),
    ("induction_score", "mean over every query instead of the second copy", induction_all_queries),
    ("logit_diff", "sign flipped", ld_sign_flipped),
    ("logit_diff", "off-by-one position (second to last)", ld_second_to_last),
    ("logit_diff", "summed over the batch instead of averaged", ld_summed),
    ("logit_lens", "forgetting the final norm", lens_no_final_norm),
    ("logit_lens", "off-by-one layer (resid_post of each layer)", lens_resid_post),
    ("logit_lens", "forgetting the unembedding bias", lens_no_unembed_bias),
    ("logit_lens", "each block's ln1 instead of ln_final", lens_block_ln1),
    ("head_dla", "forgetting the final norm", dla_no_final_norm),
    ("head_dla", "sign flipped (wrong - answer)", dla_sign_flipped),
    ("head_dla", "forgetting to centre for LayerNorm", dla_not_centred),
    ("head_dla", "the final norm's weight ln_final.w forgotten", dla_no_norm_weight),
    ("normalise_metric", "clean and corrupted swapped", normalise_swapped),
    ("normalise_metric", "divided by the clean value alone", normalise_by_clean),
    ("patch_one_site", "clean and corrupted swapped", one_site_swapped),
    ("patch_one_site", "off-by-one position", one_site_off_by_one),
    ("patch_one_site", "every position patched", one_site_every_position),
    ("patch_one_site", "hook left attached", one_site_hook_left),
    ("patch_resid_sweep", "clean and corrupted swapped", sweep_swapped),
    ("patch_resid_sweep", "[pos, layer] instead of [layer, pos]", sweep_transposed),
    ("patch_resid_sweep", "off-by-one layer (resid_post)", sweep_resid_post),
    ("patch_head_outputs", "clean and corrupted swapped", heads_swapped),
    ("patch_head_outputs", "head index on the position axis", heads_position_axis),
    ("patch_head_outputs", "only the last position patched", heads_last_position_only),
    ("attribution_heads", "sign flipped (corrupted - clean)", attribution_sign_flipped),
    ("attribution_heads", "gradient taken on the clean run", attribution_grad_on_clean),
    ("attribution_heads", "baseline left out (the change only)", attribution_no_baseline),
]
