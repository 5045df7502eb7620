"""A checkpoint as a TransformerLens 3.9 ``TransformerBridge`` in compatibility mode.

:func:`workbench.models.load_model` returns a bridge when asked (``backend="bridge"``) or when
TransformerLens cannot map a local checkpoint to a ``HookedTransformer`` (``backend="auto"``, e.g.
a Gemma-2 or Gemma-3 of a non-official size). The bridge wraps the Hugging Face model itself, so
its logits are Hugging Face's; compatibility mode gives it the ``HookedTransformer`` hook names
(``blocks.{l}.attn.hook_z``, ...) and attributes (``W_U``, ``ln_final``, ``cfg.n_heads``, ...),
here without weight processing, as the workbench's own conversions are.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch

from workbench.models.errors import UnsupportedArchitectureError

__all__ = ["Backend", "BACKENDS", "boot_bridge"]

Backend = Literal["auto", "hooked", "bridge"]
BACKENDS: tuple[str, ...] = ("auto", "hooked", "bridge")


def boot_bridge(name: str | Path, hf, tokenizer, *, device: torch.device, dtype: torch.dtype):
    """A ``TransformerBridge`` around the Hugging Face model ``hf`` (``name``: its folder or
    TransformerLens name), in compatibility mode without weight processing, in eval mode with
    gradients off."""
    from transformer_lens.model_bridge import TransformerBridge

    if not hf.config.architectures:  # a GGUF config leaves it empty; the bridge needs it
        hf.config.architectures = [type(hf).__name__]
    hf = hf.to(device=device, dtype=dtype).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(str(name), hf_model=hf, tokenizer=tokenizer,
                                                         device=device, dtype=dtype)
            bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise UnsupportedArchitectureError(
            f"TransformerLens's TransformerBridge cannot wrap {hf.config.architectures[0]!r} either: {e}"
        ) from e
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    return bridge
