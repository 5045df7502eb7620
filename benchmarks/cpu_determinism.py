"""Do the findings depend on the CPU's code path? Each phenomenon's run() under every setting.

    python benchmarks/cpu_determinism.py [--phenomena ioi retrieval arithmetic circuit_discovery]
                                         [--model smollm2-135m] [--out reports/cpu_determinism.json]

Runs each phenomenon's registered ``run(model, seed=0)`` in a fresh process per setting: PyTorch's
CPU kernels with ``ATEN_CPU_CAPABILITY`` = ``default`` (no vector extensions), ``avx2`` and
``avx512`` (where the CPU has it; ATen falls back otherwise and the row says so), each with 1 and 2
threads, and MKL's code path left free (no ``MKL_CBWR``), as a user who opens a notebook without the
Makefile gets. The first setting is the reference. Printed per phenomenon: every scorecard line
(value, interval, margin, null percentile, verdict, as the notebooks print them) and every finding's
note (where the chosen components are named) that differs from the reference, or "same" when none
does. The JSON file holds every setting's lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [(cap, threads) for cap in ("avx2", "default", "avx512") for threads in (2, 1)]

CHILD = """
import json, sys, torch
torch.set_num_threads({threads})
torch.set_grad_enabled(False)
import workbench as wb
from workbench.phenomena.registry import get
model = wb.load_model({model!r}, verbose=False)
card = get({name!r}).run(model, seed=0)
lines = card.summary().splitlines() + [f"{{f.claim.name}} note: {{f.note}}" for f in card.findings]
print("RESULT" + json.dumps({{"lines": lines, "capability": torch.backends.cpu.get_cpu_capability()}}))
"""


def run_one(name: str, model: str, capability: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY")}
    env.update(ATEN_CPU_CAPABILITY=capability, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONHASHSEED="0")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD.format(threads=threads, model=model, name=name)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    out = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    if proc.returncode or not out:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "seconds": 0.0}
    result = json.loads(out[-1][len("RESULT"):])
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def compare(name: str, runs: dict[str, dict]) -> list[str]:
    """Lines of each setting that differ from the first setting's."""
    (ref_key, ref), *others = runs.items()
    report = []
    for key, run in others:
        if "error" in run or "error" in ref:
            report.append(f"  {key}: error {run.get('error') or ref.get('error')}")
            continue
        diff = [f"    {a}\n    -> {b}" for a, b in zip(ref["lines"], run["lines"]) if a != b]
        used = f" (ATen used {run['capability']})" if run["capability"].lower() != key.split("/")[0] else ""
        report.append(f"  {key}{used}: " + ("same" if not diff else "differs from " + ref_key + "\n" + "\n".join(diff)))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phenomena", nargs="+", default=["ioi", "retrieval", "arithmetic", "circuit_discovery"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "cpu_determinism.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from workbench.phenomena.registry import get

    for name in args.phenomena:
        if getattr(get(name), "run", None) is None:
            raise SystemExit(f"Phenomenon {name!r} registers no run(); it cannot be checked here.")
    everything = {}
    for name in args.phenomena:
        runs = {f"{cap}/{threads}t": run_one(name, args.model, cap, threads) for cap, threads in SETTINGS}
        everything[name] = runs
        times = ", ".join(f"{k} {r['seconds']:.0f} s" for k, r in runs.items())
        print(f"{name} on {args.model} ({times}):")
        print("\n".join(compare(name, runs)), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(everything, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
