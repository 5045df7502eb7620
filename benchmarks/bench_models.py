"""Offline model loading: first load (GGUF conversion) vs cached load, and logits against Hugging Face.

    python benchmarks/bench_models.py [--models smollm2-135m gemma-3-270m] [--keep-cache]

For each offline model, side by side in one run:

* first load: ``load_model`` into an empty cache folder (dequantize the GGUF file, convert, write
  the safetensors cache, then load it), in its own process so one model's memory is not counted
  against the next;
* second load: ``load_model`` again from the cache just written, in a fresh process;
* the largest absolute logit difference to the Hugging Face model on a few prompts (goal < 1e-3).

Peak RSS of each process is printed beside its time. The cache folder is a temporary one (your
own ``~/.cache/workbench`` is not touched) unless ``--keep-cache`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "1 2 3 4 5 6 7 8",
]

# Run in a child process: one load, its wall time and the process's peak RSS, as JSON.
_LOAD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from workbench import models
t = time.perf_counter()
model = models.load_model({name!r}, verbose=False)
seconds = time.perf_counter() - t
out = dict(seconds=seconds, peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
if {compare!r}:
    import torch
    hf, _ = models.load_hf_model({name!r})
    worst = 0.0
    with torch.no_grad():
        for prompt in {prompts!r}:
            tokens = models.to_tokens(model, prompt)
            worst = max(worst, (model(tokens) - hf(tokens).logits).abs().max().item())
    out["max_abs_logit_diff"] = worst
print("RESULT " + json.dumps(out))
"""


def _child(name: str, cache: Path, compare: bool) -> dict:
    env = dict(os.environ, WORKBENCH_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    code = _LOAD.format(root=str(ROOT), name=name, compare=compare, prompts=PROMPTS)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"loading {name} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma-3-270m"])
    ap.add_argument("--keep-cache", action="store_true", help="convert into the real cache folder")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="workbench-cache-") as tmp:
        if args.keep_cache:
            sys.path.insert(0, str(ROOT))
            from workbench.models import CACHE_FORMAT, cache_dir

            cache = cache_dir()
            for name in args.models:
                if (cache / f"{name}-v{CACHE_FORMAT}").exists():
                    raise SystemExit(f"{name} is already in {cache}: a first load needs it absent.")
        else:
            cache = Path(tmp)
        for name in args.models:
            first = _child(name, cache, compare=False)
            second = _child(name, cache, compare=True)
            rows.append((name, first, second))
            print(f"{name}: first {first['seconds']:.1f} s, second {second['seconds']:.1f} s", flush=True)

    print()
    print(f"{'model':<14} {'first load s':>12} {'peak GB':>8} {'cached load s':>13} {'peak GB':>8} "
          f"{'speed-up':>8} {'max |logit - HF|':>17}")
    for name, first, second in rows:
        print(f"{name:<14} {first['seconds']:>12.1f} {first['peak_rss_gb']:>8.2f} "
              f"{second['seconds']:>13.1f} {second['peak_rss_gb']:>8.2f} "
              f"{first['seconds'] / second['seconds']:>7.1f}x {second['max_abs_logit_diff']:>17.2e}")
    print("(peak GB of the cached load includes the Hugging Face reference model loaded after it)")
    ok = all(s["max_abs_logit_diff"] < 1e-3 for _, _, s in rows)
    print(f"goal max |logit - HF| < 1e-3: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
