"""A workbench for mechanistic circuit analysis on TransformerLens.

>>> import workbench
>>> model = workbench.load_model()           # SmolLM2-135M, offline
>>> tokens = workbench.to_tokens(model, "When Mary and John went to the store, John gave a drink to")

One module per technique; see README.md for the layout and the direction of imports.
"""

from .models import (
    DEFAULT_MODEL,
    list_models,
    load_model,
    single_token_id,
    tiny_model,
    to_str_tokens,
    to_tokens,
)
from .results import Result

__all__ = [
    "DEFAULT_MODEL",
    "Result",
    "list_models",
    "load_model",
    "single_token_id",
    "tiny_model",
    "to_str_tokens",
    "to_tokens",
]
