"""Stored findings are compared, not hidden: nbval's sanitiser leaves scorecard lines intact.

nbval re-executes each notebook and compares its outputs with the stored ones after applying the
regexes of notebooks/sanitize.cfg. A finding's number (value, interval, null percentile, verdict)
must survive that sanitisation, so that a changed finding fails CI. Each phenomenon notebook ends
in a scorecard printed by a cell tagged ``findings``, which this file checks is stored.
"""

import configparser
import json
import re
from pathlib import Path

import pytest
import torch

from workbench.findings.claims import Claim, Scorecard, evaluate

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SUMMARY = re.compile(
    r"^(?P<name>[\w\-]+): (?:(?P<value>-?\d+\.\d+) \[(?P<lo>-?\d+\.\d+), (?P<hi>-?\d+\.\d+)\] vs \S+ "
    r"\(margin [+-]\d+\.\d+\)|no value \(.*\)) \| "
    r"null (?:-|\d+th pct of \d+) \| n \d+/\d+ \| "
    r"(replicated|at chance|below the paper's bar|not replicated|inconclusive|not measured)( \| amended: .+)?$"
)
# Every phenomenon notebook ends in its experiment's scorecard.
WITH_SCORECARD = ("01_ioi_circuit", "02_retrieval_heads", "03_temporal_heads", "04_arithmetic_heads",
                  "05_sae_features", "06_head_atlas", "07_circuit_discovery")


def _sanitise(text: str) -> str:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(NOTEBOOKS / "sanitize.cfg")
    for section in cfg.sections():
        text = re.sub(cfg[section]["regex"], cfg[section]["replace"], text)
    return text


def _summary() -> str:
    card = Scorecard("m", "nb")
    claim = Claim("faithfulness", "c", paper="p", statistic="s", threshold=0.5)
    card.add(evaluate(claim, torch.linspace(0.3, 1.2, 40), null=torch.linspace(0, 1, 200), n_select=16))
    claim = Claim("overlap-z", "c", paper="p", statistic="s", threshold=2.0, direction="below")
    card.add(evaluate(claim, -torch.linspace(0.1, 3.3, 64), n_select=0))
    return card.summary()


def test_sanitiser_leaves_scorecard_lines_unchanged():
    summary = _summary()
    assert all(SUMMARY.match(line) for line in summary.splitlines()), summary
    assert _sanitise(summary) == summary


def test_a_changed_finding_is_a_changed_output():
    summary = _summary()
    changed = summary.replace(summary.split(": ", 1)[1].split(" ", 1)[0], "0.99", 1)
    assert changed != summary and _sanitise(changed) != _sanitise(summary)


def _findings_output(path: Path) -> str:
    nb = json.loads(path.read_text())
    text = []
    for cell in nb["cells"]:
        if "findings" in cell.get("metadata", {}).get("tags", []):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream":
                    text.append("".join(out["text"]))
    return "".join(text)


@pytest.mark.parametrize("stem", WITH_SCORECARD)
def test_stored_notebook_ends_in_a_compared_scorecard(stem):
    path = NOTEBOOKS / f"{stem}.ipynb"
    nb = json.loads(path.read_text())
    params = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assert "FINDINGS_PATH" in "".join(params["source"])  # so that `workbench run` writes findings.json
    lines = [line for line in _findings_output(path).splitlines() if SUMMARY.match(line)]
    assert len(lines) >= 2, f"{stem}: no scorecard summary stored in a cell tagged 'findings'"
    assert _sanitise("\n".join(lines)) == "\n".join(lines)
    for line in lines:  # an interval holds its value; a claim without a value was not measured
        m = SUMMARY.match(line)
        if m["value"] is None:
            assert " | not measured" in line, line
            continue
        assert float(m["lo"]) <= float(m["value"]) + 0.01 and float(m["value"]) <= float(m["hi"]) + 0.01, line


@pytest.mark.parametrize("stem", ["01_ioi_circuit", "02_retrieval_heads", "03_temporal_heads",
                                  "04_arithmetic_heads", "05_sae_features", "06_head_atlas",
                                  "07_circuit_discovery"])
def test_scorecards_name_the_model_they_ran_on(stem):
    """A --random-init run must not write findings that name the trained model: every scorecard
    is labelled through model_label (the negative control reads that label)."""
    nb = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    # a scorecard is built in the notebook (Scorecard(label, ...)) or by its experiment's steps
    # (scorecard(s)(..., label, ...)); either way the label is model_label(model, MODEL)
    unlabelled = re.findall(r"\bScorecard\((?!model_label\(model, MODEL\), )", code)
    assert "model_label(model, MODEL)" in code and not unlabelled, unlabelled
