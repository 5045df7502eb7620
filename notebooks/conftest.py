"""nbval settings for the notebooks.

HTML renderings (DataFrames, progress widgets) repeat their text/plain form, which is compared
after sanitisation (sanitize.cfg); widget state carries random model ids. Neither is compared.
"""

import os

import nbval.plugin

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_SKIP = ("text/html", "application/vnd.jupyter.widget-state+json", "image/svg+xml")
_init = nbval.plugin.IPyNbFile.__init__


def _init_skipping_html(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.skip_compare = tuple(self.skip_compare) + _SKIP


nbval.plugin.IPyNbFile.__init__ = _init_skipping_html
