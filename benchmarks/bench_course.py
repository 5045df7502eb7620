"""Time each course exercise's check(solution), one after the other in one process (1 thread).

Usage: python benchmarks/bench_course.py   (the import of SAELens and the toy model load are done first,
so that the first SAE or toy check does not carry them)
"""
import time, torch
torch.set_num_threads(1)
from workbench import course
import sae_lens  # noqa: F401  (import cost kept out of the first SAE check)
from workbench.toy import load_toy_model
load_toy_model(progress=False)
rows = []
for ex in course.exercises():
    t = time.perf_counter(); ex.check(ex.solution); rows.append((ex.name, ex.minutes, time.perf_counter() - t))
for n, m, s in rows: print(f"{n:24s} {m:3d} min  check {s:.2f} s")
print(f"total {sum(s for *_, s in rows):.2f} s, max {max(s for *_, s in rows):.2f} s; {sum(m for _, m, _ in rows)} min")
