"""A faster forward pass for a ``HookedTransformer``, with the same hooks and the same values.

TransformerLens computes every attention layer explicitly: the full ``[batch, head, query, key]``
score matrix, a mask, a softmax, a pass that replaces NaNs, then ``pattern @ v``. That is what
lets a hook read or patch ``hook_attn_scores`` and ``hook_pattern``, and it is what makes a
2,000-token pass several times slower than the Hugging Face model, which calls PyTorch's fused
``scaled_dot_product_attention`` (SDPA). :func:`enable` gives each attention layer of a model a
forward that decides **per call**:

* **Fast path** (SDPA) when nothing can observe the pattern: no hook (TransformerLens forward or
  backward hook, or a plain torch hook) on that layer's ``hook_attn_scores`` or ``hook_pattern``.
  ``hook_q``, ``hook_k``, ``hook_v``, ``hook_rot_q``, ``hook_rot_k``, ``hook_z`` and (with
  ``cfg.use_attn_result``) ``hook_result`` still fire with the same shapes, and what a hook
  returns is used, so patching and caching them work as before. The mask is the one the explicit
  path builds: causal (offset by a key/value cache), the padding ``attention_mask``, and a
  sliding window on local layers (Gemma-3); the scale is the layer's ``attn_scale`` (Gemma-3's
  ``query_pre_attn_scalar``); grouped-query key/value heads are shared as TransformerLens does;
  a query row with no key to attend gives ``z = 0`` as the explicit path's NaN-to-zero does.
* **Explicit path** (TransformerLens's own forward, unchanged) otherwise: a hook on
  ``hook_attn_scores`` or ``hook_pattern`` of that layer (so ``run_with_hooks``, ``model.hooks``
  and ``run_with_cache`` caching the pattern all get the exact pattern, per call, per layer), an
  additive attention mask or position bias argument, and always on layers whose configuration
  the fast path does not cover (:func:`unsupported_reason`: soft-capped scores, ALiBi, relative
  position bias, attention sinks, 4-bit weights, OLMo's q/k norms and clipping).

The two paths agree to float rounding (about 1e-6 in float32; tests/test_fast_attention.py).

:func:`enable` also stores the weights that TransformerLens transposes on every forward pass
(``W_Q``, ``W_K``, ``W_V``, ``W_O`` of attention, ``W_in``, ``W_gate``, ``W_out`` of a gated MLP,
``W_U``) in the memory order its ``F.linear`` calls read, so that ``.T.contiguous()`` becomes a
free view instead of a copy of the weight (for Gemma-3's unembedding, 670 MB per forward pass).
Shapes, values, ``Parameter`` objects and gradients are unchanged and these matrix products are
bitwise the same; only the strides differ, so ``.view`` on such a weight needs ``.reshape``.
Gated MLPs (Llama, Gemma) and the unembedding also get their TransformerLens forward, the same
hooks in the same order, minus the addition of a bias that is all zero (checked per call): a zero
``b_U`` would first be copied into the whole ``[pos, d_vocab]`` logits tensor. :func:`disable`
restores every original forward and contiguous weights.

Example
-------
>>> import torch
>>> from workbench import fast_attention, models
>>> model = fast_attention.enable(models.tiny_model(n_kv_heads=2, positional="rotary"))
>>> tokens = torch.arange(10)[None]
>>> fast = model(tokens)
>>> with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: p)]):
...     explicit = model(tokens)                  # layer 0 falls back to the explicit pattern
>>> bool((fast - explicit).abs().max() < 1e-5), fast_attention.is_enabled(model)
(True, True)
"""

from __future__ import annotations

import types

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core.types import Model

__all__ = [
    "disable",
    "enable",
    "is_enabled",
    "pattern_observed",
    "unsupported_reason",
    "uses_fast_path",
]

_OLMO = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
_MARK = "_workbench_fast_attention"


def _attention_classes() -> tuple[type, ...]:
    from transformer_lens.components import Attention, GroupedQueryAttention

    return (Attention, GroupedQueryAttention)


def unsupported_reason(attn) -> str | None:
    """Why the fast path can never run on this attention layer, or ``None`` if it can."""
    cfg = attn.cfg
    if type(attn) not in _attention_classes():
        return f"{type(attn).__name__} is not a plain TransformerLens attention layer"
    if cfg.attn_scores_soft_cap is not None and cfg.attn_scores_soft_cap > 0:
        return "attention scores are soft-capped"
    if cfg.positional_embedding_type in ("alibi", "relative_positional_bias"):
        return f"{cfg.positional_embedding_type} position scores"
    if cfg.use_attention_sinks:
        return "attention sinks"
    if cfg.load_in_4bit:
        return "4-bit weights"
    if cfg.original_architecture in _OLMO or cfg.clip_qkv is not None:
        return "OLMo q/k norms or q/k/v clipping"
    return None


def _hooked(hook_point) -> bool:
    return bool(
        hook_point.fwd_hooks
        or hook_point.bwd_hooks
        or hook_point._forward_hooks
        or hook_point._forward_pre_hooks
        or hook_point._backward_hooks
    )


def pattern_observed(attn) -> bool:
    """True if any hook is attached to this layer's ``hook_attn_scores`` or ``hook_pattern``."""
    return _hooked(attn.hook_attn_scores) or _hooked(attn.hook_pattern)


def uses_fast_path(attn) -> bool:
    """Whether the next call of this attention layer (with no additive mask) takes the fast path."""
    return getattr(attn, _MARK, False) and not pattern_observed(attn)


# ---------------------------------------------------------------------------------------------
# The fast forward


def _key_mask(
    attn, n_query: int, n_key: int, offset: int, attention_mask: Tensor | None
) -> tuple[Tensor | None, bool]:
    """The boolean mask ``[batch|1, 1, query, key]`` (True = attend) of the explicit path, or
    ``(None, True)`` when plain causal attention (SDPA's ``is_causal``) is the same thing."""
    causal = (attn._attention_dir_override or attn.cfg.attention_dir) == "causal"
    if not causal:  # TransformerLens applies the padding mask only together with the causal one
        return None, False
    local = attn.attn_type == "local"
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    if not local and attention_mask is None and offset == 0 and n_query == n_key:
        return None, True
    device = attention_mask.device if attention_mask is not None else attn.IGNORE.device
    query_pos = torch.arange(offset, offset + n_query, device=device)
    key_pos = torch.arange(n_key, device=device)
    mask = key_pos[None, :] <= query_pos[:, None]
    if local:
        mask = mask & (key_pos[None, :] > query_pos[:, None] - attn.cfg.window_size)
    mask = mask[None, None]
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :].bool()
    return mask, False


def _sdpa(
    attn,
    q: Float[Tensor, "batch query_pos head d_head"],
    k: Float[Tensor, "batch key_pos kv_head d_head"],
    v: Float[Tensor, "batch key_pos kv_head d_head"],
    offset: int,
    attention_mask: Int[Tensor, "batch key_pos"] | None,
) -> Float[Tensor, "batch query_pos head d_head"]:
    n_heads = q.shape[2]
    q_ = q.transpose(1, 2)
    k_ = k.transpose(1, 2)
    v_ = v.transpose(1, 2).to(q.dtype)
    mask, is_causal = _key_mask(attn, q.shape[1], k.shape[1], offset, attention_mask)
    gqa = k_.shape[1] != n_heads  # grouped-query: query head h reads key/value head h // group
    if gqa and mask is not None:  # SDPA's own GQA is fast only without a mask
        group = n_heads // k_.shape[1]
        k_ = k_.repeat_interleave(group, dim=1)
        v_ = v_.repeat_interleave(group, dim=1)
    z = F.scaled_dot_product_attention(
        q_, k_, v_, attn_mask=mask, is_causal=is_causal, scale=1.0 / attn.attn_scale,
        enable_gqa=gqa and mask is None,
    )
    if mask is not None:
        attends = mask.any(-1, keepdim=True)  # [batch|1, 1, query, 1]
        if not bool(attends.all()):  # the explicit path's NaN -> 0 for rows with nothing to see
            z = z.masked_fill(~attends, 0.0)
    return z.transpose(1, 2)


def _project_out(attn, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos d_model"]:
    """``hook_z`` is applied; the output projection as TransformerLens's explicit path does it."""
    cfg = attn.cfg
    if z.dtype != attn.W_O.dtype:
        z = z.to(attn.W_O.dtype)
    if not cfg.use_attn_result:
        w = einops.rearrange(attn.W_O, "head d_head d_model -> d_model (head d_head)").contiguous()
        return F.linear(z.reshape(z.shape[0], z.shape[1], -1), w, attn.b_O)
    result = attn.hook_result(torch.einsum("bphe,hem->bphm", z, attn.W_O))
    return result.sum(-2) + attn.b_O


def _forward(
    self,
    query_input,
    key_input,
    value_input,
    past_kv_cache_entry=None,
    additive_attention_mask=None,
    attention_mask=None,
    position_bias=None,
):
    """An attention layer's forward: SDPA when the pattern is unobserved, else the explicit one."""
    if additive_attention_mask is not None or position_bias is not None or pattern_observed(self):
        return type(self).forward(
            self,
            query_input,
            key_input,
            value_input,
            past_kv_cache_entry=past_kv_cache_entry,
            additive_attention_mask=additive_attention_mask,
            attention_mask=attention_mask,
            position_bias=position_bias,
        )
    q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)
    if past_kv_cache_entry is not None:
        offset = past_kv_cache_entry.past_keys.size(1)
        k, v = past_kv_cache_entry.append(k, v)
    else:
        offset = 0
    if self.cfg.positional_embedding_type == "rotary":
        q = self.hook_rot_q(self.apply_rotary(q, offset, attention_mask))
        k = self.hook_rot_k(self.apply_rotary(k, 0, attention_mask))
    if self.cfg.use_logn_attn and not self.training:
        q = self._apply_logn_scaling(q, offset)
    z = self.hook_z(_sdpa(self, q, k, v, offset, attention_mask))
    return _project_out(self, z)


# ---------------------------------------------------------------------------------------------
# The MLP and the unembedding: TransformerLens's forward, without adding biases that are zero


def _gated_mlp_forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
    """``GatedMLP.forward`` with the same hooks; ``+ b_in`` only when ``b_in`` is not all zero
    (Llama and Gemma have none: adding it is a pass over ``[batch, pos, d_mlp]`` for nothing)."""
    if self.cfg.is_layer_norm_activation():
        return type(self).forward(self, x)
    pre_act = self.hook_pre(F.linear(x, self.W_gate.T.contiguous()))
    pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T.contiguous()))
    post = self.act_fn(pre_act) * pre_linear
    if bool(self.b_in.any()):
        post = post + self.b_in
    return F.linear(self.hook_post(post), self.W_out.T.contiguous(), self.b_out)


def _unembed_forward(self, residual: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
    """``Unembed.forward`` with the same hooks; the bias only when it is not all zero (a zero
    ``b_U`` costs a broadcast copy into the whole ``[pos, d_vocab]`` output first)."""
    residual = self.hook_in(residual)
    bias = self.b_U if bool(self.b_U.any()) else None
    return self.hook_out(F.linear(residual, self.W_U.T.contiguous(), bias))


# ---------------------------------------------------------------------------------------------
# Weight layout


def _relayout_names(module) -> list[str]:
    """Parameters of ``module`` that TransformerLens transposes (and copies) on every forward."""
    from transformer_lens.components import GroupedQueryAttention, Unembed
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    if type(module) in _attention_classes() and not module.cfg.load_in_4bit:
        if isinstance(module, GroupedQueryAttention) and not module.cfg.ungroup_grouped_query_attention:
            return ["W_Q", "_W_K", "_W_V", "W_O"]
        if not isinstance(module, GroupedQueryAttention):
            return ["W_Q", "W_K", "W_V", "W_O"]
        return ["W_Q", "W_O"]
    if type(module) is GatedMLP:
        return ["W_in", "W_gate", "W_out"]
    if type(module) is Unembed:
        return ["W_U"]
    return []


def _order(name: str) -> tuple[int, ...]:
    """The memory order (outermost dim first) in which TransformerLens's F.linear reads ``name``."""
    if name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):  # [head, d_model, d_head] read as [(h e), m]
        return (0, 2, 1)
    if name == "W_O":  # [head, d_head, d_model] read as [m, (h e)]
        return (2, 0, 1)
    return (1, 0)  # [d_in, d_out] read as its transpose


def _set_layout(param: torch.nn.Parameter, order: tuple[int, ...]) -> None:
    inverse = tuple(order.index(i) for i in range(len(order)))
    with torch.no_grad():
        param.data = param.data.permute(order).contiguous().permute(inverse)


def _relayout(model: Model, *, fast: bool) -> None:
    for module in model.modules():
        for name in _relayout_names(module):
            param = getattr(module, name, None)
            if isinstance(param, torch.nn.Parameter):
                if fast:
                    _set_layout(param, _order(name))
                elif not param.data.is_contiguous():
                    with torch.no_grad():
                        param.data = param.data.contiguous()


# ---------------------------------------------------------------------------------------------
# Public switch


def _attention_layers(model: Model) -> list:
    return [m for m in model.modules() if type(m) in _attention_classes()]


def _fast_forward_of(module):
    """The fast forward for ``module``, or ``None`` if it keeps TransformerLens's own."""
    from transformer_lens.components import Unembed
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    if type(module) in _attention_classes():
        return _forward if unsupported_reason(module) is None else None
    if type(module) is GatedMLP and not module.cfg.load_in_4bit:
        return _gated_mlp_forward
    if type(module) is Unembed:
        return _unembed_forward
    return None


def enable(model: Model):
    """Give every supported attention layer of ``model`` the per-call fast path; returns ``model``.

    Idempotent. Layers that :func:`unsupported_reason` rules out keep the explicit forward.
    Gated MLPs and the unembedding skip adding biases that are all zero (checked per call).
    """
    for module in model.modules():
        forward = _fast_forward_of(module)
        if forward is not None:
            module.forward = types.MethodType(forward, module)
            setattr(module, _MARK, True)
    _relayout(model, fast=True)
    return model


def disable(model: Model):
    """Back to TransformerLens's explicit forward everywhere, with contiguous weights."""
    for module in model.modules():
        if getattr(module, _MARK, False):
            del module.forward
            delattr(module, _MARK)
    _relayout(model, fast=False)
    return model


def is_enabled(model: Model) -> bool:
    """True if at least one attention layer of ``model`` has the fast path."""
    return any(getattr(attn, _MARK, False) for attn in _attention_layers(model))
