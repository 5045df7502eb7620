"""The replication report in a real browser: ``replication.html`` opened from disk in headless
Chromium with every request other than file/localhost aborted (and counted: none may be made).
A screenshot goes to ``reports/browser/replication.png``; every model, control and claim must be on
the page, and each cell coloured by its verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_browser import CHROMIUM
from test_views_browser import SHOTS, blocked_browser

from workbench.replicate.report import Replication, rows

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (apt-get install chromium)"),
]

MODELS = {"smollm2-135m": "a1b2c3d4e5f60718", "gemma-3-270m": "0f1e2d3c4b5a6978"}
CLAIMS = {"ioi": ["logit_diff", "name_movers", "s_inhibition"], "induction": ["induction_score", "prefix_matching"]}
VERDICT_BY_CONTROL = {"none": ["replicated", "below the paper's bar", "inconclusive"],
                      "random-init": ["at chance", "not replicated", "not measured"]}


def _records() -> list[dict]:
    out = []
    for m, h in MODELS.items():
        for control, verdicts in VERDICT_BY_CONTROL.items():
            for seed in (0, 1, 2):
                for ph, claims in CLAIMS.items():
                    findings = [{"name": c, "value": 0.1 * (i + 1) + 0.01 * seed, "ci_low": 0.05 * (i + 1),
                                 "ci_high": 0.2 * (i + 1), "null_percentile": 97.5, "n_select": 32, "n_eval": 64,
                                 "verdict": verdicts[(i + (seed == 2)) % 3], "note": ""}
                                for i, c in enumerate(claims)]
                    job = {"phenomenon": ph, "model": m, "model_hash": h, "control": control, "seed": seed,
                           "code_hash": "c0de"}
                    out.append({"job": job, "status": "ok", "findings": findings, "seconds": 1.5,
                                "computed_by_code": "c0de"})
    out.append({"job": {"phenomenon": "induction", "model": "gemma-3-270m", "model_hash": MODELS["gemma-3-270m"],
                        "control": "none", "seed": 3, "code_hash": "c0de"},
                "status": "failed", "findings": [], "error": "OutOfMemoryError: 2 GiB more needed", "seconds": 3.0})
    return out


def test_the_replication_report_reads_well_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    skipped = [{"phenomenon": "atlas", "model": m, "control": "none", "status": "no run()",
                "note": "no run() registered for this phenomenon"} for m in MODELS]
    skipped += [{"phenomenon": p, "model": m, "control": "placebo", "status": "not available",
                 "note": "placebo not available for this phenomenon"} for p in CLAIMS for m in MODELS]
    rep = Replication(rows(_records(), skipped), computed=37, reused=0, failed=1, seconds=812.0,
                      notes=["ran here, one job after another, 2 torch thread(s) per job"])
    rep.write(tmp_path)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser, context, outside = blocked_browser(pw)
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((tmp_path / "replication.html").as_uri())
            table = page.locator("table.replication")
            text = table.inner_text()
            for model in MODELS:
                assert model in text, model
            for claims in CLAIMS.values():
                for claim in claims:
                    assert claim in text, claim
            assert "random-init" in text and "placebo" in text and "no run() registered" in text
            assert text.count("2/3 seeds agree") == len(MODELS) * 2 * 5  # seed 2 disagrees in every cell
            first = table.locator("td.cell").first
            assert first.evaluate("el => getComputedStyle(el).backgroundColor") != "rgba(0, 0, 0, 0)"
            assert "OutOfMemoryError" in page.locator("body").inner_text()
            page.screenshot(path=str(SHOTS / "replication.png"), full_page=True)
            assert not errors and not outside, (errors, outside)
        finally:
            browser.close()
