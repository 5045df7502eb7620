"""Pre-registration: every phenomenon's claims match their lock file; a change needs an amendment."""

import json
import shutil

import pytest
import torch

from workbench.findings import preregistration
from workbench.findings.claims import Scorecard, evaluate
from workbench.phenomena.registry import PHENOMENA

CLAIMS = """
[design]
n_select = 8
n_eval = 16

[[claims]]
name = "big"
claim = "the effect is big"
paper = "p"
statistic = "mean"
threshold = 0.5
weaker = 0.2
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "claims.toml").write_text(CLAIMS)
    preregistration.lock(tmp_path, date="2026-12-01")
    return tmp_path


@pytest.mark.parametrize("name", [n for n, p in PHENOMENA.items() if p.claims])
def test_every_declared_claim_matches_its_lock(name):
    assert preregistration.problems(PHENOMENA[name].claims) == []


def test_a_changed_threshold_or_design_is_refused_until_amended(folder):
    before = preregistration.load(folder).hashes["big"]
    for change in (("threshold = 0.5", "threshold = 0.4"), ("n_eval = 16", "n_eval = 32")):
        (folder / "claims.toml").write_text(CLAIMS.replace(*change))
        assert preregistration.problems(folder) == [
            f"big: changed since it was registered, with no amendment recorded (run "
            f"`workbench claims amend {folder} big --reason \"...\"`)"]
        with pytest.raises(preregistration.Unregistered, match="big"):
            preregistration.load(folder)
        with pytest.raises(preregistration.Unregistered, match="amend"):
            preregistration.lock(folder)
    preregistration.amend(folder, "big", "more evaluation prompts", date="2026-12-02")
    reg = preregistration.load(folder)
    assert reg.hashes["big"] != before and reg.claims["big"].amended == "2026-12-02: more evaluation prompts"
    entry = json.loads((folder / "claims.lock.json").read_text())["big"]
    assert entry["amendments"] == [{"old": before, "new": reg.hashes["big"], "date": "2026-12-02",
                                    "reason": "more evaluation prompts"}]


def test_an_amended_claim_says_so_in_the_scorecard_and_findings_json(folder, tmp_path):
    (folder / "claims.toml").write_text(CLAIMS.replace("n_eval = 16", "n_eval = 32"))
    preregistration.amend(folder, "big", "more evaluation prompts", date="2026-12-02")
    claim = preregistration.load(folder).claims["big"]
    card = Scorecard("m", "nb", [evaluate(claim, torch.linspace(0.6, 0.9, 32), n_select=8)])
    assert card.summary().endswith("| replicated | amended: 2026-12-02: more evaluation prompts")
    saved = json.loads(card.save(tmp_path / "findings.json").read_text())
    assert saved["findings"][0]["amended"] == "2026-12-02: more evaluation prompts"
    assert Scorecard.load(tmp_path / "findings.json").findings[0].claim == claim


def test_new_removed_and_malformed_claims_are_named(folder, tmp_path):
    (folder / "claims.toml").write_text(CLAIMS + CLAIMS.split("\n", 5)[-1].replace('"big"', '"new"'))
    assert preregistration.problems(folder) == [f"new: not registered (run `workbench claims lock {folder}`)"]
    assert preregistration.lock(folder) == ["new"]
    (folder / "claims.toml").write_text(CLAIMS.replace("[[claims]]", "[[claims]]\nthreshhold = 1"))
    with pytest.raises(ValueError, match="unknown fields \\['threshhold'\\]"):
        preregistration.problems(folder)
    (folder / "claims.toml").write_text(CLAIMS)
    assert preregistration.problems(folder) == ["new: in the lock but no longer declared"]
    with pytest.raises(ValueError, match="needs a reason"):
        preregistration.amend(folder, "big", "  ")
    with pytest.raises(ValueError, match="has not changed"):
        preregistration.amend(folder, "big", "no change")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="claims.toml"):
        preregistration.load(empty)


def test_the_cli_checks_and_amends(folder, capsys):
    from workbench.cli import main

    assert main(["claims", "check", str(folder)]) == 0
    (folder / "claims.toml").write_text(CLAIMS.replace("0.5", "0.6"))
    assert main(["claims", "check", str(folder)]) == 1
    assert main(["claims", "amend", str(folder), "big", "--reason", "the paper's bar"]) == 0
    assert main(["claims", "check", str(folder)]) == 0
    assert "every claim matches" in capsys.readouterr().out
    shutil.rmtree(folder)
