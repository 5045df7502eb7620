"""Course notebooks: one source for the student and solution versions, and grading.

The execution tests start a Jupyter kernel each (no real model is loaded: the course notebooks
run on the tiny models and the toy model).
"""

from __future__ import annotations

import ast
import inspect

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from workbench import cli, course
from workbench.course import notebooks as cnb

NOTEBOOKS = cnb.course_notebooks()


def _solution_cells(nb):
    return [(i, c) for i, c in enumerate(nb.cells) if cnb.SOLUTION_TAG in c.metadata.get("tags", [])]


def _reference_source(name: str) -> str:
    lines = inspect.getsource(course.get(name).solution).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def "))
    return "\n".join(lines[start:]).strip()


def test_every_exercise_is_in_its_notebook_once_as_the_package_solution():
    seen = {}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for i, cell in _solution_cells(nb):
            _, names = cnb.stub_source(cell.source)
            assert len(names) == 1, f"{path.name} cell {i}: one exercise per solution cell"
            name = names[0]
            assert name not in seen, f"{name} in {seen.get(name)} and {path.name}"
            seen[name] = path.name
            assert course.get(name).notebook == f"course/{path.stem}"
            # the notebook's solution is the package's reference, to the character
            assert cell.source.strip() == _reference_source(name), name
            assert cnb.check_call(name) in nb.cells[i + 1].source  # followed by its checker
            header = [c.source for c in nb.cells[max(0, i - 4):i] if c.cell_type == "code"]
            assert any(f'course.show("{name}")' in s for s in header), f"{name}: no header"
            hints = [c.source for c in nb.cells[max(0, i - 3):i] if c.cell_type == "markdown"]
            assert any("<details>" in h for h in hints), f"{name}: no collapsed hint"
    assert sorted(seen) == sorted(e.name for e in course.exercises())
    prompts = sum("Predict before you run" in c.source for p in NOTEBOOKS
                  for c in nbformat.read(p, as_version=4).cells)
    assert prompts >= 5


def test_stub_keeps_the_signature_and_docstring():
    source = (
        "import torch\n\n"
        "def logit_diff(logits, answers,\n               wrong) -> float:\n"
        '    """Docstring kept."""\n    x = 1\n    return x\n\nprint("after")\n'
    )
    stub, names = cnb.stub_source(source)
    assert names == ["logit_diff"]
    tree = ast.parse(stub)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    assert [a.arg for a in fn.args.args] == ["logits", "answers", "wrong"]
    assert ast.get_docstring(fn) == "Docstring kept."
    assert isinstance(fn.body[-1], ast.Raise) and "logit_diff" in ast.unparse(fn.body[-1])
    assert "x = 1" not in stub and 'print("after")' in stub and stub.startswith("import torch")
    namespace = {}
    exec(stub, namespace)  # noqa: S102  (the generated stub, run as a notebook cell would)
    with pytest.raises(NotImplementedError, match="Exercise 'logit_diff'"):
        course.check("logit_diff", namespace["logit_diff"])


def test_build_writes_both_versions_and_the_instructor_readme(tmp_path):
    assert cli.main(["course", "build", str(tmp_path)]) == 0
    for path in NOTEBOOKS:
        student = nbformat.read(tmp_path / "student" / path.name, as_version=4)
        solution = nbformat.read(tmp_path / "solutions" / path.name, as_version=4)
        assert solution.cells == nbformat.read(path, as_version=4).cells
        assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")
        for i, cell in _solution_cells(student):
            assert "raise NotImplementedError(" in cell.source
            assert "course.check(" in student.cells[i + 1].source
    readme = (tmp_path / "README.md").read_text()
    for e in course.exercises():
        assert f"`{e.name}`" in readme and all(c in readme for c in e.catches)


def test_cli_finds_the_first_principles_notebook():
    with pytest.raises(SystemExit) as err:
        cli.find_notebook("no_such_notebook")
    known = str(err.value)
    assert "00_quickstart, 00b_first_principles, 01_ioi_circuit" in known
    assert cli.find_notebook("00b").stem == "00b_first_principles"
    assert cli.find_notebook("01").stem == "01_ioi_circuit"


def _run(nb, path):
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()


def test_student_notebook_stops_at_its_first_stub(tmp_path):
    path = cnb.course_dir() / "02_lens_and_attribution.ipynb"
    student = cnb.student_notebook(nbformat.read(path, as_version=4))
    first = next(i for i, _ in _solution_cells(student))
    with pytest.raises(CellExecutionError) as err:
        _run(student, path)
    assert "NotImplementedError" in str(err.value) and "Exercise 'logit_diff'" in str(err.value)
    failed = [i for i, c in enumerate(student.cells)
              if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed == [first + 1]  # the checker call right after the first stub


def test_grading_the_solutions_gives_full_marks_and_one_wrong_answer_zero(tmp_path, capsys):
    path = cnb.course_dir() / "02_lens_and_attribution.ipynb"
    frame = cnb.grade(path, csv=tmp_path / "solutions.csv")
    assert frame.score.tolist() == [1, 1, 1]
    assert frame.exercise.tolist() == ["logit_diff", "logit_lens", "head_dla"]

    nb = nbformat.read(path, as_version=4)
    _, cell = _solution_cells(nb)[0]  # logit_diff, answered with the sign flipped
    cell.source = cell.source.replace("last[rows, answers] - last[rows, wrong]",
                                      "last[rows, wrong] - last[rows, answers]")
    assert "last[rows, wrong] - last[rows, answers]" in cell.source
    wrong = tmp_path / "student.ipynb"
    nbformat.write(nb, wrong)
    csv = tmp_path / "scores.csv"
    assert cli.main(["course", "check", str(wrong), "--csv", str(csv)]) == 0
    scores = pd.read_csv(csv).set_index("exercise")
    assert scores.score.to_dict() == {"logit_diff": 0, "logit_lens": 1, "head_dla": 1}
    assert "opposite sign" in scores.loc["logit_diff", "message"]
    out = capsys.readouterr().out
    assert "score: 2 / 3" in out and "logit_diff" in out


def test_every_exercise_is_specified_by_its_docstring():
    for e in course.exercises():
        doc = inspect.getdoc(e.solution) or ""
        assert all(part in doc for part in ("Args:", "Returns:", "Example")), e.name
        stub, _ = cnb.stub_source(_reference_source(e.name))
        body = [ln for ln in stub.splitlines() if ln.strip().startswith("#")]
        assert not body, f"{e.name}: a comment survives in the stub: {body}"


def test_the_student_build_holds_no_solution_and_no_catalogue(tmp_path):
    from workbench.course.catalogue import WRONG

    assert cli.main(["course", "build", "--student", str(tmp_path / "hand-out")]) == 0
    files = sorted(p.name for p in (tmp_path / "hand-out").iterdir())
    assert files == sorted([p.name for p in NOTEBOOKS] + ["README.md"])
    text = "".join(p.read_text() for p in (tmp_path / "hand-out").iterdir())
    for e in course.exercises():
        body = _reference_source(e.name).splitlines()[-1].strip()  # the solution's last line
        assert body not in text, e.name
        assert e.objective in text  # the header is Markdown, readable before anything runs
    assert not any(fn.__name__ in text for _, _, fn in WRONG)
    assert "frozen_run_hooks" not in text and "end_logit_diff" not in text

    assert cli.main(["course", "build", str(tmp_path / "instructor")]) == 0
    catalogue = (tmp_path / "instructor" / "CATALOGUE.md").read_text()
    assert all(m in catalogue and fn.__name__ in catalogue for _, m, fn in WRONG)
    assert (tmp_path / "instructor" / "INSTRUCTOR.md").is_file()


def _student(tmp_path, name, edits):
    path = cnb.course_dir() / "02_lens_and_attribution.ipynb"
    nb = cnb.student_notebook(nbformat.read(path, as_version=4))
    solutions = nbformat.read(path, as_version=4)
    for (_i, cell), (_, solved) in zip(_solution_cells(nb), _solution_cells(solutions)):
        cell.source = solved.source
    for old, new in edits:
        cell = next(c for c in nb.cells if old in c.source)
        cell.source = cell.source.replace(old, new)
    nbformat.write(nb, tmp_path / f"{name}.ipynb")


def test_a_class_is_graded_into_one_csv_with_partial_credit(tmp_path):
    from workbench.course.grading import grade_folder

    _student(tmp_path, "ana", [])
    _student(tmp_path, "bo", [("last[rows, wrong]).mean()", "last[rows, wrong]).sum()")])  # summed over the batch: 1 case of 2
    _student(tmp_path, "cy", [
        ("def head_dla(", "1 / 0\n\ndef head_dla("),  # the cell raises before the definition
        ("def logit_lens(", "from workbench.course.lens import logit_lens\n\ndef _unused(")])
    wide = grade_folder(tmp_path, time_limit=240)
    table = pd.read_csv(tmp_path / "grades.csv", index_col="student")
    assert table[["logit_diff", "logit_lens", "head_dla", "total"]].to_dict("index") == {
        "ana": {"logit_diff": 1.0, "logit_lens": 1.0, "head_dla": 1.0, "total": 3.0},
        "bo": {"logit_diff": 0.5, "logit_lens": 1.0, "head_dla": 1.0, "total": 2.5},
        "cy": {"logit_diff": 1.0, "logit_lens": 0.0, "head_dla": 0.0, "total": 1.0},
    }
    assert (wide.status == "ok").all()
    long = pd.read_csv(tmp_path / "grades_long.csv").set_index(["student", "exercise"])
    assert "summed over the batch" in long.loc[("bo", "logit_diff"), "message"]
    assert "imported solution scores zero" in long.loc[("cy", "logit_lens"), "message"]
    assert "not defined" in long.loc[("cy", "head_dla"), "message"]
    for name in ("ana", "bo", "cy"):
        feedback = nbformat.read(tmp_path / f"{name}.feedback.ipynb", as_version=4)
        assert "Grading" in feedback.cells[-1].source and feedback.cells[-1].outputs
    assert "What to look at" in (tmp_path / "grades.html").read_text()


def test_a_notebook_that_hangs_is_reported_not_fatal(tmp_path):
    from workbench.course.grading import grade_notebook

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import time\ntime.sleep(120)"),
        nbformat.v4.new_code_cell('def logit_diff(logits, answers, wrong):\n    return 0'),
    ])
    nbformat.write(nb, tmp_path / "slow.ipynb")
    rows, status = grade_notebook(tmp_path / "slow.ipynb", time_limit=8)
    assert status.startswith("timed out") and rows.points.tolist() == [0.0]


def test_an_imported_solution_is_flagged_and_a_technique_used_for_comparison_is_not():
    from workbench.course.grading import exercises_in, imported_solutions

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from workbench.course.lens import head_dla\n"
                                  "x = course.get('logit_diff').solution"),
        nbformat.v4.new_code_cell("def logit_lens(model, tokens):\n    return 0\n\n"
                                  "expected = wb.lens.logit_lens(model, tokens)"),
        nbformat.v4.new_code_cell("attention_pattern = course.basics.attention_pattern"),
        nbformat.v4.new_code_cell('course.check("induction_score", my_score)'),
    ])
    assert sorted(imported_solutions(nb)) == ["attention_pattern", "head_dla", "logit_diff"]
    assert exercises_in(nb) == ["induction_score", "logit_lens"]
