"""The model type every technique takes: a TransformerLens ``HookedTransformer`` or a TL 3.9
``TransformerBridge`` (the same hook names; see README.md, "Your own model")."""

from __future__ import annotations

from typing import Any, Callable, Union

from transformer_lens import HookedTransformer
from transformer_lens.model_bridge import TransformerBridge

__all__ = ["HookList", "Model"]

#: What ``model`` means in every signature of the package.
Model = Union[HookedTransformer, TransformerBridge]

#: Forward hooks as ``model.hooks(fwd_hooks=...)`` takes them: ``(hook name or filter, hook)`` pairs.
HookList = list[tuple[Union[str, Callable[..., Any]], Callable[..., Any]]]
