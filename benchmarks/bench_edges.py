"""Edge attribution and the faithfulness curve on IOI: edges, wall times and peak memory.

    python benchmarks/bench_edges.py [--models smollm2-135m gemma-3-270m] [--n 32] [--steps 5]

For each model: every edge of the computation graph scored with EAP-IG (``steps`` integration
steps) and with EAP on ``n`` IOI prompts (ABC corruption, normalised logit difference), then the
faithfulness curve of the EAP-IG scores at MIB's fractions of edges with a random circuit of
every size (edge patching, corrupted run). Printed: the number of edges, each time, the curve's
CPR and CMD (on the prompts the edges were scored on: a speed run, not a held-out finding; the
notebook 07 reports held-out figures), and the process's peak resident memory.

The goal: EAP-IG (5 steps) on 32 prompts plus the whole curve in at most 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from workbench import edges, models
from workbench.core.metrics import normalise
from workbench.phenomena import ioi_dataset


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Clock:
    """Wall time and this process's CPU time (on a shared machine the two part ways)."""

    def __init__(self, wall: float, cpu: float):
        self.wall, self.cpu = wall, cpu

    def __add__(self, other: Clock) -> Clock:
        return Clock(self.wall + other.wall, self.cpu + other.cpu)

    def __str__(self) -> str:
        return f"{self.wall:.1f} s (CPU {self.cpu:.1f} s)"


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, Clock(time.perf_counter() - start, time.process_time() - cpu)


def bench(name: str, n: int, steps: int, progress: bool) -> None:
    model = models.load_model(name, verbose=False)
    ds = ioi_dataset(model, n=n, seed=0)
    clean, corrupted = ds.clean_tokens, ds.corrupted_tokens
    metric = normalise(model, clean, corrupted, ds.logit_diff())
    print(f"\n== {name}: {n} IOI prompts of {clean.shape[1]} tokens, torch threads {torch.get_num_threads()}")
    ig, t_ig = timed(lambda: edges.attribute_edges(model, clean, corrupted, metric, method="eap-ig", steps=steps,
                                             progress=progress))
    _eap, t_eap = timed(lambda: edges.attribute_edges(model, clean, corrupted, metric, method="eap", progress=progress))
    curve, t_curve = timed(lambda: edges.faithfulness_curve(model, clean, corrupted, metric, graph=ig, n_draws=1,
                                                            progress=progress))
    print(f"edges: {ig.n_edges} ({ig.layout.n_forward} writers x {ig.layout.n_backward} inputs, upstream only)")
    print(f"EAP-IG ({steps} steps): {t_ig} | EAP: {t_eap} | faithfulness curve "
          f"({len(curve.fractions)} sizes, EAP-IG and random): {t_curve}")
    print(f"EAP-IG + curve: {t_ig + t_curve} (goal: <= 600 s); load average {os.getloadavg()[0]:.1f}")
    print(f"EAP-IG on its own prompts: CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f}; random CPR {curve.random.cpr:.3f}, "
          f"CMD {curve.random.cmd:.3f}")
    print("faithfulness by fraction: " + ", ".join(
        f"{f:g}: {v:.2f}/{r:.2f}" for f, v, r in zip(curve.fractions, curve.faithfulness.tolist(),
                                                     curve.random.faithfulness.tolist())) + " (EAP-IG/random)")
    print(f"peak resident memory so far: {peak_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m"])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    for name in args.models:
        bench(name, args.n, args.steps, not args.no_progress)


if __name__ == "__main__":
    main()
