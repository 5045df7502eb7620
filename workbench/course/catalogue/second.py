"""Typical wrong answers to exercises 14-25, written as a student would write them.

The checkers run these on a failing case to name the mistake a student's result matches; the tests
assert that each one is rejected. One function per mistake; ``WRONG`` lists (exercise, mistake as in
its ``catches``, function).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from workbench.core.types import HookList, Model
from workbench.course import paths
from workbench.course import sae as csae


def path_logits_unfrozen(model: Model, clean, corrupted, metric, sender):
    layer, head = sender
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(corrupted)

    def hook(z, hook):
        z[:, :, head] = cache[name][:, :, head]
        return z

    with model.hooks(fwd_hooks=[(name, hook)]):
        return metric(model(clean)).item()


def path_logits_swapped(model: Model, clean, corrupted, metric, sender):
    return paths.path_patch_logits(model, corrupted, clean, metric, sender)


def path_logits_mlps_unfrozen(model: Model, clean, corrupted, metric, sender):
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    hooks = [h for h in paths.frozen_run_hooks(model, clean_cache, corrupted_cache, sender)
             if "mlp" not in h[0]]
    with model.hooks(fwd_hooks=hooks):
        return metric(model(clean)).item()


def _path_query(model: Model, clean, corrupted, metric, sender, receiver, *, frozen=True, site="q"):
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    name = f"blocks.{receiver[0]}.attn.hook_{site}"
    rec = {}

    def record(x, hook):
        rec["x"] = x.clone()

    if frozen:
        hooks = paths.frozen_run_hooks(model, clean_cache, corrupted_cache, sender)
    else:
        z = f"blocks.{sender[0]}.attn.hook_z"

        def put(x, hook):
            x[:, :, sender[1]] = corrupted_cache[z][:, :, sender[1]]
            return x

        hooks = [(z, put)]
    with model.hooks(fwd_hooks=hooks + [(name, record)]):
        model(clean)
    q_name = f"blocks.{receiver[0]}.attn.hook_q"

    def patch(q, hook):
        q[:, :, receiver[1]] = rec["x"][:, :, receiver[1] // (q.shape[2] // rec["x"].shape[2])]
        return q

    with model.hooks(fwd_hooks=[(q_name, patch)]):
        return metric(model(clean)).item()


def path_query_unfrozen(model: Model, clean, corrupted, metric, sender, receiver):
    return _path_query(model, clean, corrupted, metric, sender, receiver, frozen=False)


def path_query_key_recorded(model: Model, clean, corrupted, metric, sender, receiver):
    return _path_query(model, clean, corrupted, metric, sender, receiver, site="k")


def path_query_swapped(model: Model, clean, corrupted, metric, sender, receiver):
    return paths.path_patch_query(model, corrupted, clean, metric, sender, receiver)


def zero_position_axis(model: Model, tokens, metric, layer, head):
    def hook(z, hook):
        z[:, head] = 0.0
        return z

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)]):
        return metric(model(tokens)).item()


def zero_whole_layer(model: Model, tokens, metric, layer, head):
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_attn_out", lambda x, hook: 0 * x)]):
        return metric(model(tokens)).item()


def zero_hook_left(model: Model, tokens, metric, layer, head):
    def hook(z, hook):
        z[:, :, head] = 0.0
        return z

    model.add_hook(f"blocks.{layer}.attn.hook_z", hook)
    return metric(model(tokens)).item()


def zero_w_o_in_place(model: Model, tokens, metric, layer, head):
    with torch.no_grad():
        model.blocks[layer].attn.W_O[head] = 0.0  # the weights, not the activation; never restored
    return metric(model(tokens)).item()


def _mean_ablate(model: Model, tokens, metric, layer, head, reference, how):
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(tokens if how == "input" else reference)
    z_ref = cache[name][:, :, head]
    value = {"pos_too": z_ref.mean((0, 1)), "input": z_ref.mean(0), "zero": 0 * z_ref.mean(0)}[how]

    def hook(z, hook):
        z[:, :, head] = value
        return z

    with model.hooks(fwd_hooks=[(name, hook)]):
        return metric(model(tokens)).item()


def mean_over_positions_too(model: Model, tokens, metric, layer, head, reference):
    return _mean_ablate(model, tokens, metric, layer, head, reference, "pos_too")


def mean_over_input_batch(model: Model, tokens, metric, layer, head, reference):
    return _mean_ablate(model, tokens, metric, layer, head, reference, "input")


def mean_zeros_instead(model: Model, tokens, metric, layer, head, reference):
    return _mean_ablate(model, tokens, metric, layer, head, reference, "zero")


def _faithfulness(model: Model, tokens, metric, circuit, reference, *, invert=False, kind="mean",
                  ratio="circuit/model"):
    _, cache = model.run_with_cache(reference)
    keep = set(circuit)

    def hook(z, hook):
        for h in range(model.cfg.n_heads):
            if ((hook.layer(), h) in keep) == invert:
                mean = cache[hook.name][:, :, h].mean(0)
                z[:, :, h] = mean if kind == "mean" else 0 * mean
        return z

    hooks: HookList = [(f"blocks.{layer}.attn.hook_z", hook) for layer in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        c = metric(model(tokens)).item()
    m = metric(model(tokens)).item()
    return c / m if ratio == "circuit/model" else m / c


def faith_circuit_ablated(model: Model, tokens, metric, circuit, reference):
    return _faithfulness(model, tokens, metric, circuit, reference, invert=True)


def faith_ratio_inverted(model: Model, tokens, metric, circuit, reference):
    return _faithfulness(model, tokens, metric, circuit, reference, ratio="model/circuit")


def faith_zero_ablation(model: Model, tokens, metric, circuit, reference):
    return _faithfulness(model, tokens, metric, circuit, reference, kind="zero")


def _hits(model: Model, haystack, *, shift=0, compare_token=True, argmax_dim=-1):
    full = haystack.full_tokens
    n, m = haystack.tokens.shape[1], len(haystack.answer_ids)
    queries = torch.arange(n - 1, n - 1 + m) + shift
    start, end = haystack.needle_span
    hits = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.long)

    def count(pattern, hook):
        if argmax_dim == -1:
            top = pattern[0, :, queries].argmax(-1)
        else:
            top = pattern[0].argmax(-2)[:, queries]  # the query that looks most at each key
        ok = (top >= start) & (top < end)
        if compare_token:
            ok &= full[0, top.clamp(max=full.shape[1] - 1)] == haystack.answer_ids
        hits[hook.layer()] = ok.sum(-1)

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=[(name, count) for name in names]):
        model(full)
    return hits


def hits_off_by_one_query(model: Model, haystack):
    return _hits(model, haystack, shift=1)


def hits_token_not_compared(model: Model, haystack):
    return _hits(model, haystack, compare_token=False)


def hits_argmax_over_queries(model: Model, haystack):
    return _hits(model, haystack, argmax_dim=-2)


def _year(model: Model, ds, head, *, at_end=True, swapped=False, normalised=True):
    layer, h = head
    name = f"blocks.{layer}.attn.hook_z"
    source, target = ((ds.corrupted_tokens, ds.clean_tokens) if swapped
                      else (ds.clean_tokens, ds.corrupted_tokens))
    _, cache = model.run_with_cache(source)
    rows = torch.arange(len(ds.answer_ids))
    pos = ds.pos["END"] if at_end else torch.full_like(ds.pos["END"], -1)

    def ld(tokens):
        last = model(tokens)[rows, pos]
        return (last[rows, ds.answer_ids] - last[rows, ds.counterfactual_ids]).mean().item()

    def hook(z, hook):
        z[:, :, h] = cache[name][:, :, h]
        return z

    base_source, base_target = ld(source), ld(target)
    with model.hooks(fwd_hooks=[(name, hook)]):
        patched = ld(target)
    return (patched - base_target) / (base_source - base_target) if normalised else patched


def year_last_position(model: Model, ds, head):
    return _year(model, ds, head, at_end=False)


def year_swapped(model: Model, ds, head):
    return _year(model, ds, head, swapped=True)


def year_not_normalised(model: Model, ds, head):
    return _year(model, ds, head, normalised=False)


def _mover(model: Model, ds, *, swapped=False, pos=2, normalised=True):
    metric = ds.logit_diff()
    source, target = ((ds.corrupted_tokens, ds.clean_tokens) if swapped
                      else (ds.clean_tokens, ds.corrupted_tokens))
    s, t = metric(model(source)).item(), metric(model(target)).item()
    _, cache = model.run_with_cache(source)
    out = torch.zeros(model.cfg.n_heads)
    for h in range(model.cfg.n_heads):
        def hook(z, hook, h=h):
            z[:, pos, h] = cache[hook.name][:, pos, h]
            return z

        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", hook)]):
            v = metric(model(target)).item()
        out[h] = (v - t) / (s - t) if normalised else v
    return out


def mover_swapped(model: Model, ds):
    return _mover(model, ds, swapped=True)


def mover_at_operand(model: Model, ds):
    return _mover(model, ds, pos=0)


def mover_not_normalised(model: Model, ds):
    return _mover(model, ds, normalised=False)


def _operand_attention(model: Model, tokens, *, hook="pattern", query=2, swapped=False):
    _, cache = model.run_with_cache(tokens)
    p = cache[f"blocks.0.attn.hook_{hook}"]
    if swapped:
        p = p.transpose(-1, -2)
    return p[:, :, query, :2].mean(0).T


def attention_query_key_swapped(model: Model, tokens):
    return _operand_attention(model, tokens, swapped=True)


def attention_from_b(model: Model, tokens):
    return _operand_attention(model, tokens, query=1)


def attention_scores_not_pattern(model: Model, tokens):
    return _operand_attention(model, tokens, hook="attn_scores")


def _encode(sae, x, *, b_dec=True, topk=True, dim=-1):
    pre = ((x - sae.b_dec) if b_dec else x) @ sae.W_enc + sae.b_enc
    if not topk:
        return pre.relu()
    top = pre.topk(sae.cfg.k, dim=dim)
    return torch.zeros_like(pre).scatter(dim, top.indices, top.values.relu())


def encode_no_b_dec(sae, x):
    return _encode(sae, x, b_dec=False)


def encode_relu_only(sae, x):
    return _encode(sae, x, topk=False)


def encode_topk_wrong_dim(sae, x):
    return _encode(sae, x, dim=1)


def decode_no_bias(sae, latents):
    return latents @ sae.W_dec


def decode_encoder_transpose(sae, latents):
    return latents @ sae.W_enc.T + sae.b_dec


def _feature_attr(model: Model, sae, clean, corrupted, metric, *, sign=1.0, error_term=True, at="corrupted"):
    at_tokens, other = (corrupted, clean) if at == "corrupted" else (clean, corrupted)
    _, cache = model.run_with_cache(other)
    other_latents = sae.encode(cache[csae.HOOK])
    store = {}

    def splice(x, hook):
        store["l"] = sae.encode(x).detach().requires_grad_(True)
        r = sae.decode(store["l"])
        return x + (r - r.detach()) if error_term else r

    with torch.enable_grad(), model.hooks(fwd_hooks=[(csae.HOOK, splice)]):
        value = metric(model(at_tokens))
        (grad,) = torch.autograd.grad(value, store["l"])
    delta = sign * grad * (other_latents - store["l"].detach())
    return value.detach() + delta[:, 1:].sum(dim=(0, 1))


def feature_sign_flipped(model: Model, sae, clean, corrupted, metric):
    return _feature_attr(model, sae, clean, corrupted, metric, sign=-1.0)


def feature_no_error_term(model: Model, sae, clean, corrupted, metric):
    return _feature_attr(model, sae, clean, corrupted, metric, error_term=False)


def feature_grad_on_clean(model: Model, sae, clean, corrupted, metric):
    return _feature_attr(model, sae, clean, corrupted, metric, at="clean")


WRONG: list[tuple[str, str, Callable[..., Any]]] = [
    ("path_patch_logits", "nothing frozen (plain activation patching)", path_logits_unfrozen),
    ("path_patch_logits", "clean and corrupted swapped", path_logits_swapped),
    ("path_patch_logits", "MLPs left unfrozen", path_logits_mlps_unfrozen),
    ("path_patch_query", "nothing frozen in the first run", path_query_unfrozen),
    ("path_patch_query", "the key recorded instead of the query", path_query_key_recorded),
    ("path_patch_query", "clean and corrupted swapped", path_query_swapped),
    ("zero_ablate_head", "head index on the position axis", zero_position_axis),
    ("zero_ablate_head", "the whole attention layer zeroed", zero_whole_layer),
    ("zero_ablate_head", "hook left attached", zero_hook_left),
    ("zero_ablate_head", "W_O zeroed in place (never restored)", zero_w_o_in_place),
    ("mean_ablate_head", "mean over positions too", mean_over_positions_too),
    ("mean_ablate_head", "mean over the input batch, not the reference", mean_over_input_batch),
    ("mean_ablate_head", "zeros instead of the mean", mean_zeros_instead),
    ("faithfulness", "the circuit ablated instead of its complement", faith_circuit_ablated),
    ("faithfulness", "ratio inverted", faith_ratio_inverted),
    ("faithfulness", "zero instead of mean ablation", faith_zero_ablation),
    ("retrieval_hits", "off-by-one query (the answer token's own position)", hits_off_by_one_query),
    ("retrieval_hits", "any attention inside the needle counted, token not compared",
     hits_token_not_compared),
    ("retrieval_hits", "argmax over the query axis", hits_argmax_over_queries),
    ("year_patch_head", "read at the last position, not END (padding)", year_last_position),
    ("year_patch_head", "clean and corrupted swapped", year_swapped),
    ("year_patch_head", "not normalised", year_not_normalised),
    ("toy_operand_mover", "clean and corrupted swapped", mover_swapped),
    ("toy_operand_mover", "patched at the operand's position, not '='", mover_at_operand),
    ("toy_operand_mover", "not normalised", mover_not_normalised),
    ("toy_operand_attention", "query and key swapped", attention_query_key_swapped),
    ("toy_operand_attention", "from b's position, not '='", attention_from_b),
    ("toy_operand_attention", "scores before the softmax", attention_scores_not_pattern),
    ("sae_encode", "decoder bias not subtracted", encode_no_b_dec),
    ("sae_encode", "ReLU without the top-k", encode_relu_only),
    ("sae_encode", "top-k over the wrong dim", encode_topk_wrong_dim),
    ("sae_decode", "decoder bias forgotten", decode_no_bias),
    ("sae_decode", "the encoder's transpose used as the decoder", decode_encoder_transpose),
    ("feature_attribution", "sign flipped", feature_sign_flipped),
    ("feature_attribution", "error term left out (reconstruction spliced in)", feature_no_error_term),
    ("feature_attribution", "gradient taken on the clean run", feature_grad_on_clean),
]
