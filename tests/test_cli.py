"""The command line: clear errors before any work, complete reports or clearly failed ones."""

import nbformat
import pytest

from workbench import cli


def _notebook(path, *cells, parameters="MODEL = 'x'\nN = 2"):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    for source, tags in cells:
        nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags}))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


PLOT = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, N])\nplt.show()"


def test_unknown_notebook_names_the_known_ones():
    with pytest.raises(SystemExit, match=r"Unknown notebook 'nope'.*01_ioi_circuit.*'all'"):
        cli.main(["run", "nope"])


def test_find_notebook_by_number_stem_and_name():
    by_number = cli.find_notebook("01")
    assert by_number.name == "01_ioi_circuit.ipynb"
    assert cli.find_notebook("01_ioi_circuit") == by_number == cli.find_notebook("01_ioi_circuit.ipynb")


def test_unknown_model_fails_before_any_kernel_starts(tmp_path):
    with pytest.raises(SystemExit, match=r"Unknown model 'no-such-model'.*smollm2-135m.*gemma-3-270m"):
        cli.main(["run", "00", "--model", "no-such-model", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="Unknown model"):
        cli.main(["atlas", "--model", "no-such-model", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # nothing written


def test_transformer_lens_names_pass_the_model_check():
    cli.check_model_name("gpt2")  # known to TransformerLens; loading it needs the hub
    cli.check_model_name("gemma-3-270m")


@pytest.mark.parametrize("pair", ["N", "1=2", "N-1=3"])
def test_malformed_param(pair):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        cli._parse_params([pair])


def test_param_values_are_python_literals_or_strings():
    assert cli._parse_params(["N=3", "XS=(1, 2)", "NAME=abc", "F=0.5"]) == {
        "N": 3, "XS": (1, 2), "NAME": "abc", "F": 0.5,
    }


def test_unknown_param_lists_the_notebooks_parameters(tmp_path):
    with pytest.raises(SystemExit, match=r"Unknown parameter\(s\) \['NOPE'\].*\['DEVICE', 'DTYPE', 'MODEL', 'PROMPT'\]"):
        cli.main(["run", "00", "--param", "NOPE=1", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_notebook_without_parameters_cell(tmp_path):
    path = _notebook(tmp_path / "nb.ipynb")
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].metadata["tags"] = []
    with pytest.raises(SystemExit, match="no cell tagged 'parameters'"):
        cli._inject(nb, {"MODEL": "m"})


def test_run_writes_a_complete_report(tmp_path, capsys):
    nb = _notebook(
        tmp_path / "demo.ipynb",
        (PLOT, []),
        ("print(f'found {N * 3} heads on {MODEL}')", ["findings"]),
    )
    report = cli.run_notebook(nb, "some-model", {"N": 7}, tmp_path / "reports")
    assert report == tmp_path / "reports" / "some-model"
    executed = nbformat.read(report / "demo.ipynb", as_version=4)
    assert executed.cells[1].source.startswith("# Parameters injected")
    assert "N = 7" in executed.cells[1].source and "MODEL = 'some-model'" in executed.cells[1].source
    html = (report / "demo.html").read_text()
    assert html.count("found 21 heads on some-model") >= 1
    assert "cdnjs" not in html and "require.min.js" not in html and "unpkg" not in html  # opens offline
    figures = list((report / "figures").glob("demo-cell*.png"))
    assert len(figures) == 1 and figures[0].read_bytes()[:4] == b"\x89PNG"
    assert not list(report.glob(".*partial*"))
    out = capsys.readouterr().out
    assert "found 21 heads on some-model" in out  # the findings summary


def test_failing_cell_is_named_and_no_complete_report_is_left(tmp_path):
    out = tmp_path / "reports"
    nb = _notebook(tmp_path / "demo.ipynb", (PLOT, []), ("print('ok')", ["findings"]))
    report = cli.run_notebook(nb, "m", {}, out)
    assert (report / "demo.ipynb").exists() and (report / "demo.html").exists()
    # The same notebook now fails in its third cell: the old complete report must go.
    _notebook(tmp_path / "demo.ipynb", (PLOT, []), ("assert N > 5, 'too few heads'", ["findings"]))
    with pytest.raises(SystemExit) as e:
        cli.run_notebook(nb, "m", {}, out)
    message = str(e.value)
    assert "failed in cell 3" in message and "assert N > 5" in message and "too few heads" in message
    assert "demo.FAILED.ipynb" in message
    assert not (report / "demo.ipynb").exists() and not (report / "demo.html").exists()
    assert not list((report / "figures").glob("demo-cell*.png"))
    assert not list(report.glob(".*partial*"))
    failed = nbformat.read(report / "demo.FAILED.ipynb", as_version=4)
    assert any(o.get("output_type") == "error" for o in failed.cells[3].outputs)
    # A later successful run removes the FAILED marker.
    _notebook(tmp_path / "demo.ipynb", ("print('fixed')", ["findings"]))
    cli.run_notebook(nb, "m", {}, out)
    assert (report / "demo.ipynb").exists() and not (report / "demo.FAILED.ipynb").exists()


def test_run_all_goes_on_after_a_failure_and_lists_it(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "01_bad.ipynb", ("raise ValueError('no heads found')", []))
    _notebook(folder / "02_good.ipynb", ("print('fine')", ["findings"]))
    monkeypatch.setattr(cli, "notebooks_dir", lambda: folder)
    code = cli.main(["run", "all", "--model", "smollm2-135m", "--out", str(tmp_path / "reports")])
    assert code == 1
    err = capsys.readouterr().err
    assert "01_bad.ipynb failed in cell 2" in err and "no heads found" in err
    assert "1 of 2 notebooks failed on smollm2-135m: 01_bad" in err
    report = tmp_path / "reports" / "smollm2-135m"
    assert (report / "02_good.ipynb").exists() and (report / "01_bad.FAILED.ipynb").exists()
    assert not (report / "01_bad.ipynb").exists()


def test_local_paths_are_accepted_and_named_safely(tmp_path):
    folder = tmp_path / "my model (final)"
    folder.mkdir()
    with pytest.raises(SystemExit, match="no config.json"):
        cli.check_model_name(str(folder))
    with pytest.raises(SystemExit, match="no such file"):
        cli.check_model_name(str(tmp_path / "missing.gguf"))
    gguf = tmp_path / "tiny.Q4_0.gguf"
    gguf.write_bytes(b"GGUF")
    assert cli.check_model_name(str(gguf)) == str(gguf.resolve())
    name = cli.report_name(str(gguf))
    assert name.startswith("tiny.Q4_0-") and len(name) == len("tiny.Q4_0-") + 8
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "tiny.Q4_0.gguf").write_bytes(b"GGUF")
    assert cli.report_name(str(other / "tiny.Q4_0.gguf")) != name  # same file name, other path
    assert cli.report_name(str(folder)).startswith("my-model-final-")
    assert cli.report_name("smollm2-135m") == "smollm2-135m"
    assert cli.report_name("EleutherAI/pythia-70m") == "EleutherAI--pythia-70m"


def test_device_and_dtype_are_injected_as_parameters(tmp_path):
    nb = _notebook(
        tmp_path / "demo.ipynb",
        ("print(f'on {DEVICE} in {DTYPE}')", ["findings"]),
        parameters="MODEL = 'x'\nDEVICE = None\nDTYPE = None",
    )
    report = cli.run_notebook(nb, "m", cli._device_params("cpu", "bfloat16"), tmp_path / "reports")
    assert "on cpu in bfloat16" in (report / "demo.html").read_text()
    with pytest.raises(SystemExit, match="int8"):
        cli._device_params(None, "int8")
    with pytest.raises(SystemExit, match="'tpu'"):
        cli._device_params("tpu", None)
    old = _notebook(tmp_path / "old.ipynb", parameters="MODEL = 'x'")
    with pytest.raises(SystemExit, match=r"Unknown parameter\(s\) \['DEVICE'\]"):
        cli._inject(cli._read_notebook(old), {"MODEL": "m", "DEVICE": "cpu"})


SAVE = ("import json, pathlib\n"
        "if FINDINGS_PATH:\n"
        "    pathlib.Path(FINDINGS_PATH).write_text(json.dumps([{'claim': 'c', 'value': N}]))")


def test_run_writes_findings_json_when_the_notebook_takes_findings_path(tmp_path):
    import json

    nb = _notebook(tmp_path / "demo.ipynb", (SAVE, ["findings"]), parameters="MODEL = 'x'\nN = 2\nFINDINGS_PATH = None")
    report = cli.run_notebook(nb, "m", {"N": 5}, tmp_path / "reports")
    assert json.loads((report / "demo.findings.json").read_text()) == [{"claim": "c", "value": 5}]
    executed = nbformat.read(report / "demo.ipynb", as_version=4)
    assert "demo.findings.json" in executed.cells[1].source
    # A failing run removes the findings of the earlier complete run.
    _notebook(tmp_path / "demo.ipynb", (SAVE, []), ("raise ValueError('broken')", []),
              parameters="MODEL = 'x'\nN = 2\nFINDINGS_PATH = None")
    with pytest.raises(SystemExit, match="broken"):
        cli.run_notebook(nb, "m", {}, tmp_path / "reports")
    assert not (report / "demo.findings.json").exists()


def test_run_fails_when_a_findings_notebook_writes_none(tmp_path):
    nb = _notebook(tmp_path / "demo.ipynb", ("print('no save')", []), parameters="MODEL = 'x'\nFINDINGS_PATH = None")
    with pytest.raises(SystemExit, match="wrote no demo.findings.json"):
        cli.run_notebook(nb, "m", {}, tmp_path / "reports")
    assert not (tmp_path / "reports" / "m" / "demo.ipynb").exists()


def test_random_init_injects_the_control_after_the_parameters(tmp_path):
    # The control cell needs a real model name; check the injection without executing it
    # (tests/test_negative_control.py runs it).
    cell = cli._random_init_cell("smollm2-135m", 3)
    assert "random_init_model('smollm2-135m', seed=3)" in cell.source
    assert "_wb.load_model = " in cell.source

