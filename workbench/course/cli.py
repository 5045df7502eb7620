"""``workbench course``: build the hand-outs, grade one notebook or a whole class.

    workbench course build OUT             instructor build: student/, solutions/, README.md,
                                           CATALOGUE.md (wrong answers), INSTRUCTOR.md (guide)
    workbench course build --student OUT   the hand-out: stub notebooks and a set-up README only
    workbench course check NOTEBOOK        run it, check each exercise, print and save the scores
    workbench course grade FOLDER          every notebook under FOLDER: grades.csv (student x
                                           exercise points), grades.html, NAME.feedback.ipynb
    workbench course list                  the exercises: name, notebook, minutes, difficulty
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
    build.add_argument("--student", action="store_true",
                       help="the students' hand-out only: no solutions, no wrong-answer catalogue")
    check = actions.add_parser("check", help="execute a filled-in student notebook and score it")
    check.add_argument("notebook", help="path to the .ipynb")
    check.add_argument("--csv", default=None, help="score table CSV (default: NOTEBOOK.scores.csv)")
    check.add_argument("--timeout", type=int, default=600, help="seconds for the whole notebook")
    grade = actions.add_parser("grade", help="grade every student notebook in a folder")
    grade.add_argument("folder", help="folder of student notebooks (searched recursively)")
    grade.add_argument("--time-limit", type=float, default=300,
                       help="seconds per notebook; one that runs longer is reported, not graded")
    grade.add_argument("--out", default=None, help="where grades.csv / .html go (default: FOLDER)")
    actions.add_parser("list", help="list the exercises")
    return course


def _grade(args) -> int:
    import pandas as pd

    from workbench.course.grading import grade_folder

    folder = Path(args.folder)
    if not folder.is_dir():
        raise SystemExit(f"No folder at {folder}.")
    out = Path(args.out) if args.out else folder
    wide = grade_folder(folder, time_limit=args.time_limit, out=out)
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        print(wide.to_string())
    print(f"{len(wide)} notebooks -> {out / 'grades.csv'}, {out / 'grades.html'}; feedback "
          "notebooks beside each student's (NAME.feedback.ipynb)")
    return 0


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from workbench.course import exercises
    from workbench.course.notebooks import build, grade

    if args.course_command == "list":
        frame = pd.DataFrame([e.to_row() for e in exercises()]).drop(columns=["objective", "catches"])
        print(frame.to_string(index=False))
        return 0
    if args.course_command == "build":
        out = Path(args.out)
        paths = build(out, student_only=args.student)
        n = sum(p.suffix == ".ipynb" for p in paths)
        if args.student:
            print(f"{n} student notebooks -> {out} (no solutions, no catalogue)")
        else:
            print(f"{n // 2} course notebooks -> {out / 'student'} and {out / 'solutions'}; "
                  f"instructor's notes: {out / 'README.md'}, {out / 'CATALOGUE.md'}")
        return 0
    if args.course_command == "grade":
        return _grade(args)
    notebook = Path(args.notebook)
    if not notebook.is_file():
        raise SystemExit(f"No notebook at {notebook}.")
    csv = Path(args.csv) if args.csv else notebook.with_suffix(".scores.csv")
    frame = grade(notebook, csv=csv, timeout=args.timeout)
    with pd.option_context("display.width", 200, "display.max_colwidth", 90):
        print(frame.drop(columns=["message"]).to_string(index=False))
        for row in frame.itertuples():
            if row.score < 1:
                print(f"\n{row.exercise}: {row.message}")
    print(f"score: {frame.points.sum():g} / {len(frame)} -> {csv}")
    return 0
