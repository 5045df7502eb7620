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
