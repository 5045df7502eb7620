"""nbval settings for the notebooks.

HTML renderings (DataFrames, progress widgets) repeat their text/plain form, which is compared
after sanitisation (sanitize.cfg); widget state carries random model ids. Neither is compared.
"""

import os

import nbval.plugin

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# With -n N (pytest-xdist) each worker runs whole notebooks (--dist loadfile), and the kernels it
# starts take an equal share of the cores: two kernels that each take every core run far slower
# than one after the other. The stored outputs hold on 1 thread as on 2.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _workers:
    _share = str(max(1, len(os.sched_getaffinity(0)) // _workers))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _share

_SKIP = ("text/html", "application/vnd.jupyter.widget-state+json", "image/svg+xml")
_init = nbval.plugin.IPyNbFile.__init__


def _init_skipping_html(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.skip_compare = tuple(self.skip_compare) + _SKIP


nbval.plugin.IPyNbFile.__init__ = _init_skipping_html
