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

EXERCISES = course.exercises()


# ============================================================================================
# Wrong answers, exercise by exercise


def tokens_missing_bos(tokenizer, text):
    return torch.tensor([tokenizer.encode(text)])  # SmolLM2's tokenizer adds no BOS


def tokens_doubled_bos(tokenizer, text):
    return torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(text)]])  # Gemma's adds one


def tokens_1d(tokenizer, text):
    return torch.tensor([tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False)])


def resid_post_instead(model, tokens, layer):
    _, cache = model.run_with_cache(tokens)
    return cache[f"blocks.{layer}.hook_resid_post"]


def resid_hook_left(model, tokens, layer):
    stored = {}
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


def _lens_resid(model, tokens, post=False):
    n = model.cfg.n_layers
    kind = "post" if post else "pre"
    names = [f"blocks.{layer}.hook_resid_{kind}" for layer in range(n)]
    if not post:
        names.append(f"blocks.{n - 1}.hook_resid_post")
    _, cache = model.run_with_cache(tokens)
    return torch.stack([cache[name][:, -1] for name in names])


def lens_no_final_norm(model, tokens):
    return model.unembed(_lens_resid(model, tokens))


def lens_resid_post(model, tokens):
    return model.unembed(model.ln_final(_lens_resid(model, tokens, post=True)))


def lens_no_unembed_bias(model, tokens):
    return model.ln_final(_lens_resid(model, tokens)) @ model.W_U


def _dla(model, tokens, answers, wrong, *, norm=True, centre=True, sign=1.0):
    _, cache = model.run_with_cache(tokens)
    direction = (model.W_U[:, answers] - model.W_U[:, wrong]).T
    scale = cache["ln_final.hook_scale"][:, -1] if norm else torch.ones(len(tokens), 1)
    if norm:
        direction = direction * model.ln_final.w
    out = []
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][:, -1]
        h = torch.einsum("bhd,hdm->bhm", z, model.W_O[layer])
        if centre and norm and model.cfg.normalization_type == "LN":
            h = h - h.mean(-1, keepdim=True)
        out.append(torch.einsum("bhm,bm->bh", h / scale[:, :, None], direction).mean(0))
    return sign * torch.stack(out)


def dla_no_final_norm(model, tokens, answers, wrong):
    return _dla(model, tokens, answers, wrong, norm=False)


def dla_sign_flipped(model, tokens, answers, wrong):
    return _dla(model, tokens, answers, wrong, sign=-1.0)


def dla_not_centred(model, tokens, answers, wrong):
    return _dla(model, tokens, answers, wrong, centre=False)


def normalise_swapped(value, clean, corrupted):
    return (value - clean) / (corrupted - clean)


def normalise_by_clean(value, clean, corrupted):
    return value / clean


def _patch_resid(model, source, target, metric, layer, pos, *, kind="pre", all_pos=False):
    name = f"blocks.{layer}.hook_resid_{kind}"
    _, cache = model.run_with_cache(source)

    def hook(resid, hook):
        if all_pos:
            return cache[name]
        resid[:, pos] = cache[name][:, pos]
        return resid

    with model.hooks(fwd_hooks=[(name, hook)]):
        return metric(model(target)).item()


def one_site_swapped(model, clean, corrupted, metric, layer, pos):
    return _patch_resid(model, corrupted, clean, metric, layer, pos)


def one_site_off_by_one(model, clean, corrupted, metric, layer, pos):
    return _patch_resid(model, clean, corrupted, metric, layer, pos + 1)


def one_site_every_position(model, clean, corrupted, metric, layer, pos):
    return _patch_resid(model, clean, corrupted, metric, layer, pos, all_pos=True)


def one_site_hook_left(model, clean, corrupted, metric, layer, pos):
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = model.run_with_cache(clean)

    def hook(resid, hook):
        resid[:, pos] = cache[name][:, pos]
        return resid

    model.add_hook(name, hook)
    return metric(model(corrupted)).item()


def _sweep(model, clean, corrupted, metric, **kw):
    out = torch.zeros(model.cfg.n_layers, clean.shape[1])
    for layer in range(model.cfg.n_layers):
        for pos in range(clean.shape[1]):
            out[layer, pos] = _patch_resid(model, clean, corrupted, metric, layer, pos, **kw)
    return out


def sweep_swapped(model, clean, corrupted, metric):
    return _sweep(model, corrupted, clean, metric)


def sweep_transposed(model, clean, corrupted, metric):
    return _sweep(model, clean, corrupted, metric).T


def sweep_resid_post(model, clean, corrupted, metric):
    return _sweep(model, clean, corrupted, metric, kind="post")


def _patch_heads(model, source, target, metric, *, index="head", last_only=False):
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


def heads_swapped(model, clean, corrupted, metric):
    return _patch_heads(model, corrupted, clean, metric)


def heads_position_axis(model, clean, corrupted, metric):
    return _patch_heads(model, clean, corrupted, metric, index="pos")


def heads_last_position_only(model, clean, corrupted, metric):
    return _patch_heads(model, clean, corrupted, metric, last_only=True)


def _attribution(model, clean, corrupted, metric, *, sign=1.0, grad_on="corrupted", baseline=True):
    at, other = (corrupted, clean) if grad_on == "corrupted" else (clean, corrupted)
    _, other_cache = model.run_with_cache(other)
    zs = {}

    def keep(z, hook):
        zs[hook.name] = z
        return z

    def leaf(resid, hook):
        return resid.detach().requires_grad_(True)

    hooks = [("blocks.0.hook_resid_pre", leaf), (lambda n: n.endswith("hook_z"), keep)]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = metric(model(at))
        grads = torch.autograd.grad(value, list(zs.values()))
    delta = torch.stack([(g * sign * (other_cache[n] - zs[n].detach())).sum(dim=(0, 1, 3))
                         for n, g in zip(zs, grads)])
    return delta + value.detach() if baseline else delta


def attribution_sign_flipped(model, clean, corrupted, metric):
    return _attribution(model, clean, corrupted, metric, sign=-1.0)


def attribution_grad_on_clean(model, clean, corrupted, metric):
    return _attribution(model, clean, corrupted, metric, grad_on="clean")


def attribution_no_baseline(model, clean, corrupted, metric):
    return _attribution(model, clean, corrupted, metric, baseline=False)


def path_logits_unfrozen(model, clean, corrupted, metric, sender):
    layer, head = sender
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(corrupted)

    def hook(z, hook):
        z[:, :, head] = cache[name][:, :, head]
        return z

    with model.hooks(fwd_hooks=[(name, hook)]):
        return metric(model(clean)).item()


def path_logits_swapped(model, clean, corrupted, metric, sender):
    return paths.path_patch_logits(model, corrupted, clean, metric, sender)


def path_logits_mlps_unfrozen(model, clean, corrupted, metric, sender):
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    hooks = [h for h in paths.frozen_run_hooks(model, clean_cache, corrupted_cache, sender)
             if "mlp" not in h[0]]
    with model.hooks(fwd_hooks=hooks):
        return metric(model(clean)).item()


def _path_query(model, clean, corrupted, metric, sender, receiver, *, frozen=True, site="q"):
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


def path_query_unfrozen(model, clean, corrupted, metric, sender, receiver):
    return _path_query(model, clean, corrupted, metric, sender, receiver, frozen=False)


def path_query_key_recorded(model, clean, corrupted, metric, sender, receiver):
    return _path_query(model, clean, corrupted, metric, sender, receiver, site="k")


def path_query_swapped(model, clean, corrupted, metric, sender, receiver):
    return paths.path_patch_query(model, corrupted, clean, metric, sender, receiver)


def zero_position_axis(model, tokens, metric, layer, head):
    def hook(z, hook):
        z[:, head] = 0.0
        return z

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)]):
        return metric(model(tokens)).item()


def zero_whole_layer(model, tokens, metric, layer, head):
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_attn_out", lambda x, hook: 0 * x)]):
        return metric(model(tokens)).item()


def zero_hook_left(model, tokens, metric, layer, head):
    def hook(z, hook):
        z[:, :, head] = 0.0
        return z

    model.add_hook(f"blocks.{layer}.attn.hook_z", hook)
    return metric(model(tokens)).item()


def _mean_ablate(model, tokens, metric, layer, head, reference, how):
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(tokens if how == "input" else reference)
    z_ref = cache[name][:, :, head]
    value = {"pos_too": z_ref.mean((0, 1)), "input": z_ref.mean(0), "zero": 0 * z_ref.mean(0)}[how]

    def hook(z, hook):
        z[:, :, head] = value
        return z

    with model.hooks(fwd_hooks=[(name, hook)]):
        return metric(model(tokens)).item()


def mean_over_positions_too(model, tokens, metric, layer, head, reference):
    return _mean_ablate(model, tokens, metric, layer, head, reference, "pos_too")


def mean_over_input_batch(model, tokens, metric, layer, head, reference):
    return _mean_ablate(model, tokens, metric, layer, head, reference, "input")


def mean_zeros_instead(model, tokens, metric, layer, head, reference):
    return _mean_ablate(model, tokens, metric, layer, head, reference, "zero")


def _faithfulness(model, tokens, metric, circuit, reference, *, invert=False, kind="mean",
                  ratio="circuit/model"):
    _, cache = model.run_with_cache(reference)
    keep = set(circuit)

    def hook(z, hook):
        for h in range(model.cfg.n_heads):
            if ((hook.layer(), h) in keep) == invert:
                mean = cache[hook.name][:, :, h].mean(0)
                z[:, :, h] = mean if kind == "mean" else 0 * mean
        return z

    hooks = [(f"blocks.{layer}.attn.hook_z", hook) for layer in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        c = metric(model(tokens)).item()
    m = metric(model(tokens)).item()
    return c / m if ratio == "circuit/model" else m / c


def faith_circuit_ablated(model, tokens, metric, circuit, reference):
    return _faithfulness(model, tokens, metric, circuit, reference, invert=True)


def faith_ratio_inverted(model, tokens, metric, circuit, reference):
    return _faithfulness(model, tokens, metric, circuit, reference, ratio="model/circuit")


def faith_zero_ablation(model, tokens, metric, circuit, reference):
    return _faithfulness(model, tokens, metric, circuit, reference, kind="zero")


def _hits(model, haystack, *, shift=0, compare_token=True, argmax_dim=-1):
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


def hits_off_by_one_query(model, haystack):
    return _hits(model, haystack, shift=1)


def hits_token_not_compared(model, haystack):
    return _hits(model, haystack, compare_token=False)


def hits_argmax_over_queries(model, haystack):
    return _hits(model, haystack, argmax_dim=-2)


def _year(model, ds, head, *, at_end=True, swapped=False, normalised=True):
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


def year_last_position(model, ds, head):
    return _year(model, ds, head, at_end=False)


def year_swapped(model, ds, head):
    return _year(model, ds, head, swapped=True)


def year_not_normalised(model, ds, head):
    return _year(model, ds, head, normalised=False)


def _mover(model, ds, *, swapped=False, pos=2, normalised=True):
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


def mover_swapped(model, ds):
    return _mover(model, ds, swapped=True)


def mover_at_operand(model, ds):
    return _mover(model, ds, pos=0)


def mover_not_normalised(model, ds):
    return _mover(model, ds, normalised=False)


def _operand_attention(model, tokens, *, hook="pattern", query=2, swapped=False):
    _, cache = model.run_with_cache(tokens)
    p = cache[f"blocks.0.attn.hook_{hook}"]
    if swapped:
        p = p.transpose(-1, -2)
    return p[:, :, query, :2].mean(0).T


def attention_query_key_swapped(model, tokens):
    return _operand_attention(model, tokens, swapped=True)


def attention_from_b(model, tokens):
    return _operand_attention(model, tokens, query=1)


def attention_scores_not_pattern(model, tokens):
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


def _feature_attr(model, sae, clean, corrupted, metric, *, sign=1.0, error_term=True, at="corrupted"):
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


def feature_sign_flipped(model, sae, clean, corrupted, metric):
    return _feature_attr(model, sae, clean, corrupted, metric, sign=-1.0)


def feature_no_error_term(model, sae, clean, corrupted, metric):
    return _feature_attr(model, sae, clean, corrupted, metric, error_term=False)


def feature_grad_on_clean(model, sae, clean, corrupted, metric):
    return _feature_attr(model, sae, clean, corrupted, metric, at="clean")


# (exercise, mistake as listed in its `catches`, wrong answer)
WRONG = [
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
    ("head_dla", "forgetting the final norm", dla_no_final_norm),
    ("head_dla", "sign flipped (wrong - answer)", dla_sign_flipped),
    ("head_dla", "forgetting to centre for LayerNorm", dla_not_centred),
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
    ("path_patch_logits", "nothing frozen (plain activation patching)", path_logits_unfrozen),
    ("path_patch_logits", "clean and corrupted swapped", path_logits_swapped),
    ("path_patch_logits", "MLPs left unfrozen", path_logits_mlps_unfrozen),
    ("path_patch_query", "nothing frozen in the first run", path_query_unfrozen),
    ("path_patch_query", "the key recorded instead of the query", path_query_key_recorded),
    ("path_patch_query", "clean and corrupted swapped", path_query_swapped),
    ("zero_ablate_head", "head index on the position axis", zero_position_axis),
    ("zero_ablate_head", "the whole attention layer zeroed", zero_whole_layer),
    ("zero_ablate_head", "hook left attached", zero_hook_left),
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
    exercise.check(exercise.solution)


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
        course.get("patch_head_outputs").check(heads_swapped)
    with pytest.raises(AssertionError, match="opposite sign"):
        course.get("head_dla").check(dla_sign_flipped)
    with pytest.raises(AssertionError, match=r"grouped-query model.*head=\d"):
        course.get("attention_pattern").check(pattern_repeat_not_interleave)
    with pytest.raises(AssertionError, match="look transposed"):
        course.get("patch_resid_sweep").check(sweep_transposed)


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
