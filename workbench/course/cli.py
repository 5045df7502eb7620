"""``workbench course``: build the student and solution notebooks, grade a filled-in notebook.

    workbench course build OUT            student/ and solutions/ notebooks and an instructor README
    workbench course check NOTEBOOK       run it, check each exercise, print and save the scores
    workbench course list                 the exercises: name, notebook, minutes, difficulty
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "main"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``course`` subcommand to an argparse subparsers object."""
    course = sub.add_parser("course", help="course mode: build student notebooks, grade them")
    actions = course.add_subparsers(dest="course_command", required=True)
    build = actions.add_parser("build", help="write student and solution notebooks and a README")
    build.add_argument("out", help="output folder")
    check = actions.add_parser("check", help="execute a filled-in student notebook and score it")
    check.add_argument("notebook", help="path to the .ipynb")
    check.add_argument("--csv", default=None, help="score table CSV (default: NOTEBOOK.scores.csv)")
    check.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    actions.add_parser("list", help="list the exercises")
    return course


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from workbench.course import exercises
    from workbench.course.notebooks import build, grade

    if args.course_command == "list":
        frame = pd.DataFrame([e.to_row() for e in exercises()]).drop(columns=["objective", "catches"])
        print(frame.to_string(index=False))
        return 0
    if args.course_command == "build":
        paths = build(Path(args.out))
        n = sum(p.suffix == ".ipynb" for p in paths) // 2
        print(f"{n} course notebooks -> {Path(args.out) / 'student'} and "
              f"{Path(args.out) / 'solutions'}; instructor's notes: {Path(args.out) / 'README.md'}")
        return 0
    notebook = Path(args.notebook)
    if not notebook.is_file():
        raise SystemExit(f"No notebook at {notebook}.")
    csv = Path(args.csv) if args.csv else notebook.with_suffix(".scores.csv")
    frame = grade(notebook, csv=csv, timeout=args.timeout)
    with pd.option_context("display.width", 200, "display.max_colwidth", 90):
        print(frame.to_string(index=False))
    print(f"score: {int(frame.score.sum())} / {len(frame)} -> {csv}")
    return 0
