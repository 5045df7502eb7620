"""ipywidgets explorers for JupyterLab; each degrades to a static matplotlib figure.

:func:`attention_explorer` records the attention patterns of a few prompts once and redraws one
head at a time as the layer, head and prompt controls change. Where widgets cannot be shown
(``ipywidgets`` does not import, or no Jupyter kernel is running to draw them), it returns the
static figure of :func:`workbench.viz.plot.attention_patterns` for the first layer's heads instead,
and says so in a warning.

>>> import torch
>>> from workbench import models
>>> from workbench.widgets import attention_explorer
>>> ex = attention_explorer(models.tiny_model(), torch.arange(6)[None], mode="widget")
>>> ex.layer.value = 1                    # redraws the panel
>>> ex.n_draws
2
"""

from __future__ import annotations

import warnings
from typing import Literal, Sequence

from torch import Tensor

from workbench.core import checks
from workbench.core.types import Model
from workbench.techniques.attention import get_patterns
from workbench.techniques.lens import token_strings
from workbench.viz import plot

__all__ = ["AttentionExplorer", "attention_explorer", "widgets_available"]

#: Refuse to cache more pattern entries than this (float32: 4 bytes each) in one explorer.
MAX_CACHED_ENTRIES = 1 << 27  # 512 MB

ExplorerMode = Literal["auto", "widget", "static"]


def _import_ipywidgets():
    import ipywidgets

    return ipywidgets


def _in_kernel() -> bool:
    """True inside a running IPython kernel (a notebook front end can draw widgets)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def widgets_available() -> bool:
    """Whether an explorer built now would show as widgets (ipywidgets imports, kernel running)."""
    try:
        _import_ipywidgets()
    except ImportError:
        return False
    return _in_kernel()


class AttentionExplorer:
    """Controls (prompt, layer, head) over cached patterns; one redrawn panel in ``output``.

    Attributes:
        prompt, layer, head: the ipywidgets controls; changing any redraws.
        output: the ``ipywidgets.Output`` the figure is drawn into.
        box: the whole layout (what a notebook displays).
        patterns: ``{(layer, head): [batch, query, key]}`` recorded once.
        figure: the last figure drawn; ``n_draws`` counts the redraws.
    """

    def __init__(self, ipywidgets, model: Model, tokens: Tensor, patterns, prompt_names: list[str]):
        self.model = model
        self.tokens = tokens
        self.patterns = patterns
        self.figure = None
        self.n_draws = 0
        cfg = model.cfg
        self.prompt = ipywidgets.Dropdown(
            options=[(name, i) for i, name in enumerate(prompt_names)],
            value=0,
            description="prompt",
        )
        self.layer = ipywidgets.IntSlider(
            value=0, min=0, max=cfg.n_layers - 1, description="layer"
        )
        self.head = ipywidgets.IntSlider(value=0, min=0, max=cfg.n_heads - 1, description="head")
        self.output = ipywidgets.Output()
        for control in (self.prompt, self.layer, self.head):
            control.observe(self.on_change, names="value")
        self.box = ipywidgets.VBox(
            [ipywidgets.HBox([self.prompt, self.layer, self.head]), self.output]
        )
        self.redraw()

    def on_change(self, change=None) -> None:
        """Handler of every control: redraw the chosen head."""
        self.redraw()

    def redraw(self) -> None:
        import matplotlib.pyplot as plt

        b, l, h = int(self.prompt.value), int(self.layer.value), int(self.head.value)
        labels = token_strings(self.model, self.tokens[b].tolist())
        if self.figure is not None:
            plt.close(self.figure)
        self.figure = plot.attention_patterns(
            {(l, h): self.patterns[(l, h)]}, labels, batch=b, ncols=1, title=f"prompt {b}"
        )
        self.n_draws += 1
        if _in_kernel():  # outside a kernel there is no front end to draw into
            from IPython.display import display

            self.output.clear_output(wait=True)
            with self.output:
                display(self.figure)
        plt.close(self.figure)  # shown through the Output widget only, not again by the backend

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)


def attention_explorer(
    model: Model,
    prompts_or_tokens: str | Sequence[str] | Tensor,
    *,
    mode: ExplorerMode = "auto",
):
    """Explore every head's attention pattern on a few prompts.

    Args:
        prompts_or_tokens: text (tokenized with :func:`workbench.models.to_tokens`) or token ids
            ``[batch, pos]``.
        mode: ``"widget"`` build the ipywidgets explorer (``ImportError`` if ipywidgets is
            missing); ``"static"`` return the figure of layer 0's heads for the first prompt;
            ``"auto"`` the explorer when :func:`widgets_available`, else the figure with a warning.

    Returns:
        :class:`AttentionExplorer` (displayed by the notebook), or a matplotlib figure.
    """
    if mode not in ("auto", "widget", "static"):
        raise ValueError(f"mode must be 'auto', 'widget' or 'static', got {mode!r}.")
    if isinstance(prompts_or_tokens, Tensor):
        tokens = checks.tokens(model, prompts_or_tokens)
    else:
        from workbench.models import to_tokens

        tokens = to_tokens(model, prompts_or_tokens, padding="right")
    batch, seq = tokens.shape
    entries = model.cfg.n_layers * model.cfg.n_heads * batch * seq * seq
    if entries > MAX_CACHED_ENTRIES:
        raise ValueError(
            f"Caching every head's pattern for {batch} prompt(s) of {seq} tokens needs "
            f"{entries * 4 / 2**30:.1f} GB. Use fewer or shorter prompts, or draw chosen heads "
            "with workbench.techniques.attention.get_patterns and workbench.viz.plot.attention_patterns."
        )

    ipywidgets = None
    reason = ""
    if mode != "static":
        try:
            ipywidgets = _import_ipywidgets()
        except ImportError as e:
            if mode == "widget":
                raise ImportError(
                    "attention_explorer(mode='widget') needs ipywidgets: pip install ipywidgets."
                ) from e
            reason = "ipywidgets is not installed"
        if ipywidgets is not None and mode == "auto" and not _in_kernel():
            ipywidgets, reason = None, "no Jupyter kernel is running to draw widgets"

    if ipywidgets is None:
        heads = [(0, h) for h in range(model.cfg.n_heads)]
        patterns = get_patterns(model, tokens[:1], heads)
        if mode == "auto":
            warnings.warn(
                f"Showing a static figure of layer 0's heads instead of the explorer: {reason}. "
                "Draw other heads with workbench.viz.plot.attention_patterns(get_patterns(...)).",
                stacklevel=2,
            )
        labels = token_strings(model, tokens[0].tolist())
        return plot.attention_patterns(patterns, labels, title="prompt 0")

    patterns = get_patterns(model, tokens, None)
    names = [
        f"{i}: " + "".join(token_strings(model, tokens[i].tolist()))[-40:] for i in range(batch)
    ]
    return AttentionExplorer(ipywidgets, model, tokens, patterns, names)
