"""Time each course exercise's check(solution), one after the other in one process (1 thread).

Usage: python benchmarks/bench_course.py [--wrong]

``--wrong`` also times the check of every wrong answer of the catalogue (a failing check runs the
diagnosis: the exercise's catalogue on the first failing case).

SAELens is imported and the toy model loaded first, so that the first SAE or toy check does not
carry them (the first SAE check in a fresh process pays about 2 s of import).
"""

import sys
import time

import sae_lens  # noqa: F401  (import cost kept out of the first SAE check)
import torch

from workbench import course
from workbench.models.toy import load_toy_model


def main() -> None:
    torch.set_num_threads(1)
    load_toy_model(progress=False)
    rows = []
    for ex in course.exercises():
        start = time.perf_counter()
        ex.check(ex.solution, allow_package=True)
        rows.append((ex.name, ex.minutes, time.perf_counter() - start))
    for name, minutes, seconds in rows:
        print(f"{name:24s} {minutes:3d} min  check {seconds:.2f} s")
    total = sum(s for *_, s in rows)
    print(f"total {total:.2f} s, max {max(s for *_, s in rows):.2f} s; "
          f"{sum(m for _, m, _ in rows)} min of exercises")
    if "--wrong" in sys.argv:
        from workbench.course.catalogue import WRONG

        times = []
        for name, mistake, fn in WRONG:
            start = time.perf_counter()
            try:
                course.get(name).check(fn, allow_package=True)
            except AssertionError:
                pass
            times.append((time.perf_counter() - start, name, mistake))
        slowest = max(times)
        print(f"{len(times)} wrong answers: total {sum(t for t, *_ in times):.2f} s, slowest "
              f"{slowest[0]:.2f} s ({slowest[1]}: {slowest[2]})")


if __name__ == "__main__":
    main()
