"""The errors a model load can raise (all subclasses of ``RuntimeError`` or ``ValueError``)."""

from __future__ import annotations

__all__ = [
    "ModelNotAvailableError",
    "CacheCorruptedError",
    "CheckpointError",
    "UnsupportedArchitectureError",
]


class ModelNotAvailableError(RuntimeError):
    """A model could not be loaded: unknown name, missing package, or no hub to fetch it from."""


class CacheCorruptedError(RuntimeError):
    """A cached conversion failed its integrity check."""


class CheckpointError(ValueError):
    """A local checkpoint (folder or GGUF file) is not one, is damaged, or contradicts itself."""


class UnsupportedArchitectureError(ModelNotAvailableError):
    """The checkpoint's architecture is one TransformerLens cannot convert to a HookedTransformer."""
