"""Replication across models (workbench.replicate), run here: jobs, the results store, the report.

The models are tiny random Llama checkpoints (2 layers, d_model 64) with the SmolLM2 tokenizer
saved beside them, loaded by path. Until every phenomenon registers its ``run()``, the tests
register small toy phenomena of their own (and remove them afterwards) whose ``run()`` measures
something real on the model through ``evaluate``: previous-token attention and induction accuracy.
The last test iterates over every registered phenomenon that has a ``run()``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench import models
from workbench.findings.claims import VERDICTS, Claim, Scorecard, evaluate
from workbench.phenomena.registry import PHENOMENA, Phenomenon
from workbench.replicate import Store, api, jobs, plan
from workbench.replicate.execute import LOADS, connect

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_TOKENIZER = models.cache.entry_dir("smollm2-135m") / "tokenizer"


# ------------------------------------------------------------------ toy phenomena
def _prev_token_run(model, *, seed=0, label=None):
    """Previous-token attention of the best head (chosen on 8 selection prompts) on 16 others."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(200, 4000, (24, 10), generator=gen)
    patterns = wb.get_patterns(model, tokens)  # {(layer, head): [batch, query, key]}
    per_head = torch.stack([p.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1) for p in patterns.values()], -1)
    best = int(per_head[:8].mean(0).argmax())
    claim = Claim("prev_token_head", "a head attends to the previous token", paper="toy",
                  statistic="mean attention to the previous token, best head", threshold=0.5,
                  null="every head's value on the same prompts")
    finding = evaluate(claim, per_head[8:, best], null=per_head[8:].mean(0), n_select=8, seed=seed)
    return Scorecard(label or model.cfg.model_name, "toy_prev_token", [finding])


def _induction_run(model, *, seed=0, label=None):
    """Top-1 accuracy on the second half of repeated random sequences; logit of the right token."""
    gen = torch.Generator().manual_seed(1000 + seed)
    half = torch.randint(200, 4000, (12, 6), generator=gen)
    tokens = torch.cat([half, half], 1)
    logits = model(tokens)[:, 6:-1]
    target = tokens[:, 7:]
    correct = (logits.argmax(-1) == target).float().mean(-1)
    gap = (logits.gather(-1, target[..., None])[..., 0] - logits.mean(-1)).mean(-1)
    card = Scorecard(label or model.cfg.model_name, "toy_induction")
    card.add(evaluate(Claim("induction_accuracy", "repeated tokens are predicted", "toy", "top-1 accuracy",
                            threshold=0.5), correct, n_select=0, seed=seed))
    card.add(evaluate(Claim("induction_logit", "the repeated token's logit is above the mean", "toy",
                            "logit gap", threshold=1.0), gap, n_select=0, seed=seed))
    return card


def _slow_run(model, *, seed=0, label=None):
    """The previous-token toy; where REPLICATE_TEST_MARKERS is set, it first leaves a marker with
    its process id there and waits, so that a test can kill the worker mid-job."""
    markers = os.environ.get("REPLICATE_TEST_MARKERS")
    if markers:
        Path(markers, f"{os.getpid()}-{time.time_ns()}").write_text(str(os.getpid()))
        time.sleep(2.0)
    card = _prev_token_run(model, seed=seed, label=label)
    card.notebook = "toy_slow"
    return card


def _broken_run(model, *, seed=0, label=None):
    raise RuntimeError(f"this phenomenon needs layer 5; the model has {model.cfg.n_layers}")


TOYS = [Phenomenon("toy_prev_token", "toy: previous-token head", run=_prev_token_run),
        Phenomenon("toy_induction", "toy: induction", run=_induction_run),
        Phenomenon("toy_slow", "toy: previous-token head, slowly where asked", run=_slow_run)]


@pytest.fixture(scope="module")
def toys():
    """The toy phenomena, registered for the module and removed afterwards."""
    for p in TOYS:
        PHENOMENA[p.name] = p
    yield [p.name for p in TOYS]
    for p in TOYS:
        PHENOMENA.pop(p.name, None)


@pytest.fixture
def broken():
    PHENOMENA["toy_broken"] = Phenomenon("toy_broken", "toy: always fails", run=_broken_run)
    yield "toy_broken"
    PHENOMENA.pop("toy_broken", None)


# ------------------------------------------------------------------ tiny checkpoints
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    if (SMOLLM2_TOKENIZER / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER)
    return models.load_model("smollm2-135m", verbose=False).tokenizer  # fills the cache once


def make_checkpoint(folder: Path, *, seed: int) -> Path:
    """A tiny random Llama (2 layers, 4 heads, 2 key/value heads) with the SmolLM2 tokenizer."""
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                   max_position_embeddings=128, tie_word_embeddings=True)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny checkpoints, and a cache of converted weights of the module's own."""
    root = tmp_path_factory.mktemp("replicate")
    smollm2_tokenizer()  # before the cache moves: read from the user's cache
    old = os.environ.get("WORKBENCH_CACHE")
    os.environ["WORKBENCH_CACHE"] = str(root / "cache")
    yield [str(make_checkpoint(root / f"tiny-{s}", seed=s)) for s in (1, 2)]
    if old is None:
        os.environ.pop("WORKBENCH_CACHE", None)
    else:
        os.environ["WORKBENCH_CACHE"] = old


def comparable(rep) -> list[dict]:
    """A replication's findings without timing or placement (what two runs must agree on)."""
    frame = rep.findings().drop(columns=["stale"])
    return json.loads(frame.to_json(orient="records"))


# ------------------------------------------------------------------ bad input, before anything runs
def test_bad_input_names_the_valid_choices_before_anything_runs(toys, checkpoints, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown phenomenon 'iio'; choose from \[.*'ioi'"):
        wb.replicate(checkpoints, ["iio"], out=tmp_path)
    with pytest.raises(ValueError, match="Model source 'no-such-model'.*offline model"):
        wb.replicate(["no-such-model"], toys, out=tmp_path)
    with pytest.raises(ValueError, match=r"Unknown control 'shuffled'; choose from \['random-init', 'placebo'\]"):
        wb.replicate(checkpoints, toys, controls=["shuffled"], out=tmp_path)
    with pytest.raises(ValueError, match="seeds must be a positive int"):
        wb.replicate(checkpoints, toys, seeds=0, out=tmp_path)
    with pytest.raises(ValueError, match="models must be a non-empty list"):
        wb.replicate(checkpoints[0], toys, out=tmp_path)
    with pytest.raises(ValueError, match="jobs must be a positive int or 'auto'"):
        wb.replicate(checkpoints, toys, jobs=0, out=tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        wb.replicate(checkpoints, toys, dtype="float8", out=tmp_path)
    assert not (tmp_path / "store").exists()


def test_an_unreachable_scheduler_is_a_clear_error_within_seconds():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"Cannot reach the Dask scheduler at 'tcp://127.0.0.1:{port}' within 1 s"):
        connect(f"tcp://127.0.0.1:{port}", timeout=1)
    assert time.perf_counter() - start < 5
    with pytest.raises(ValueError, match="looks like tcp://host:port"):
        connect("nowhere")


def test_the_cli_refuses_bad_input_with_the_choices(toys, capsys):
    from workbench.cli import main

    with pytest.raises(SystemExit, match="workbench replicate: Unknown phenomenon 'nope'; choose from"):
        main(["replicate", "--models", "smollm2-135m", "--phenomena", "nope"])


def test_the_cli_runs_a_replication_and_writes_the_report(toys, checkpoints, tmp_path, capsys):
    from workbench.cli import main

    assert main(["replicate", "--models", *checkpoints, "--phenomena", "toy_prev_token",
                 "--controls", "placebo", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "2 jobs computed, 0 reused, 0 failed" in out and str(tmp_path / "replication.html") in out
    assert "toy_prev_token (placebo): placebo not available for this phenomenon" in err
    assert (tmp_path / "replication.png").exists()


def test_how_many_jobs_run_at_once_here(toys, checkpoints, monkeypatch):
    from workbench.replicate import execute
    from workbench.replicate.execute import local_parallelism

    todo = plan(checkpoints, ["toy_prev_token"], controls=["random-init"]).jobs  # 4 models to load
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert local_parallelism(todo) == (1, 4)  # default: one after another with every thread
    assert local_parallelism(todo, "auto") == (4, 1)  # tiny models: as many as threads and loads
    assert local_parallelism(todo, 2) == (2, 2)  # the threads shared so that their sum fits
    assert local_parallelism(todo[:1], "auto") == (1, 4)  # never more than the models to load
    monkeypatch.setattr(execute, "_estimated_bytes", lambda source: 2**50)
    assert local_parallelism(todo, "auto") == (1, 4)  # what does not fit in memory runs in turn


# ------------------------------------------------------------------ jobs, keys, store
def test_keys_hold_claims_model_content_code_control_seed(toys, checkpoints):
    p = plan(checkpoints, ["toy_prev_token"], controls=["random-init", "placebo"], seeds=2)
    assert len(p.jobs) == 2 * 2 * 2  # models x (model, random-init) x seeds
    assert {tuple(sorted(j.key)) for j in p.jobs} == {("claims", "code", "control", "device", "dtype", "model", "seed")}
    assert len({j.id for j in p.jobs}) == len(p.jobs)
    assert {j.claims_hash for j in p.jobs} == {"toy_prev_token-no-claims"}
    assert len({j.model_hash for j in p.jobs}) == 2 and jobs.model_hash(checkpoints[0]) == p.jobs[0].model_hash
    assert [s["note"] for s in p.skipped] == ["placebo not available for this phenomenon"] * 2
    no_run = plan(checkpoints[:1], ["ioi"]) if PHENOMENA["ioi"].run is None else None
    if no_run is not None:
        assert no_run.jobs == [] and no_run.skipped[0]["status"] == "no run()"


def test_store_writes_atomically_and_a_failure_does_not_count_as_done(toys, checkpoints, tmp_path):
    job = plan(checkpoints[:1], ["toy_prev_token"]).jobs[0]
    store = Store(tmp_path)
    assert not store.done(job) and store.read(job) is None
    store.write(job, {"status": "failed", "error": "boom", "job": job.to_dict()})
    assert not store.done(job) and store.read(job)["error"] == "boom"
    store.write(job, {"status": "ok", "findings": [], "job": job.to_dict()})
    assert store.done(job) and not store.path(job, failed=True).exists()
    assert [p.name for p in store.path(job).parent.iterdir()] == [store.path(job).name]  # no temporary left


# ------------------------------------------------------------------ running here
def test_local_run_stores_every_job_and_a_second_run_recomputes_nothing(toys, checkpoints, broken, tmp_path):
    PHENOMENA["toy_finder_only"] = Phenomenon("toy_finder_only", "toy: a finder and no experiment")
    names = ["toy_prev_token", "toy_induction", broken, "toy_finder_only"]
    try:
        rep = wb.replicate(checkpoints, names, controls=["placebo"], seeds=2, out=tmp_path, progress=False)
    finally:
        PHENOMENA.pop("toy_finder_only")
    n_jobs = 3 * 2 * 2  # phenomena with run() x models x seeds
    assert (rep.computed, rep.reused, rep.failed) == (n_jobs, 0, 2 * 2)
    frame = rep.to_frame()
    ok = frame[frame["status"] == "ok"]
    assert set(ok["verdict"]) <= set(VERDICTS) and len(ok) == 3 * 2 * 2  # 3 claims (prev, 2 induction)
    failed = frame[frame["status"] == "failed"]
    assert len(failed) == 4 and failed["error"].str.contains("RuntimeError: this phenomenon needs layer 5").all()
    placebo = frame[frame["control"] == "placebo"]
    assert set(placebo["note"]) == {"placebo not available for this phenomenon"} and len(placebo) == 3 * 2
    assert set(frame.loc[frame["phenomenon"] == "toy_finder_only", "status"]) == {"no run()"}
    for name in ("replication.csv", "replication.json", "replication.html", "replication.png"):
        assert (tmp_path / name).stat().st_size > 0
    LOADS.clear()
    names = names[:3]
    again = wb.replicate(checkpoints, names, controls=["placebo"], seeds=2, out=tmp_path, progress=False)
    assert (again.computed, again.reused) == (2 * 2, n_jobs - 2 * 2)  # only the failed jobs run again
    assert comparable(again) == comparable(rep)
    assert len(LOADS) == len(set(LOADS)) == 2  # each model loaded once for all its jobs
    PHENOMENA.pop(broken)
    third = wb.replicate(checkpoints, names[:2], seeds=2, out=tmp_path, progress=False)
    assert third.computed == 0 and third.reused == 2 * 2 * 2


def test_report_columns_and_seeds_agreeing(toys, checkpoints, tmp_path):
    rep = wb.replicate(checkpoints[:1], ["toy_induction"], seeds=3, out=tmp_path, progress=False)
    data = json.loads((tmp_path / "replication.json").read_text())
    assert list(data["rows"][0])[:14] == ["phenomenon", "claim", "model", "model_hash", "control", "seed",
                                          "value", "ci_low", "ci_high", "null_percentile", "verdict",
                                          "n_select", "n_eval", "seconds"]
    keys, cols, cells = rep.table()
    assert keys == [("toy_induction", "induction_accuracy"), ("toy_induction", "induction_logit")]
    cell = cells[(keys[0], cols[0])]
    assert cell["seeds"].endswith("/3 seeds agree") and cell["verdict"] in VERDICTS
    html = (tmp_path / "replication.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "induction_accuracy" in html and Path(checkpoints[0]).name in html
    md = (tmp_path / "replication.md").read_text().splitlines()
    assert md[0] == f"| phenomenon: claim | {cols[0][0]} |" and md[1] == "|---|---|"
    assert md[2].startswith(f"| toy_induction: induction_accuracy | {cell['text']} **{cell['verdict']}** ({cell['seeds']})")
    assert len(md) == 2 + len(keys) and md == rep.to_markdown().splitlines()


def test_a_store_of_other_code_is_recomputed_and_a_row_of_other_code_is_marked(toys, checkpoints, tmp_path,
                                                                              monkeypatch):
    first = wb.replicate(checkpoints[:1], ["toy_prev_token"], out=tmp_path, progress=False)
    monkeypatch.setattr(jobs, "code_hash", lambda: "0123456789abcdef")
    monkeypatch.setattr(api, "code_hash", lambda: "0123456789abcdef")
    other = wb.replicate(checkpoints[:1], ["toy_prev_token"], out=tmp_path, progress=False)
    assert (other.computed, other.reused) == (1, 0)
    assert any("written by other workbench code" in n for n in other.notes)
    assert comparable(other) == comparable(first)
    # A row computed by a process whose code differs from the planner's is kept and marked.
    assert other.frame["stale"].str.contains("computed by code .* planned by code 0123456789abcdef").all()


def test_replication_follows_the_result_protocol(toys, checkpoints, tmp_path):
    rep = wb.replicate(checkpoints[:1], ["toy_prev_token"], out=tmp_path, progress=False, write=False)
    back = type(rep).load(rep.save(tmp_path / "rep.pt"))
    assert back.to_frame().equals(rep.to_frame()) and back.computed == 1
    assert "prev_token_head" in rep._repr_html_()
    assert rep.plot().axes


def test_a_declared_placebo_runs_as_a_column_with_its_draws_stated(checkpoints, tmp_path):
    from dataclasses import dataclass
    from typing import Callable

    @dataclass(frozen=True)
    class WithPlacebo(Phenomenon):  # until the controls issue adds the field to Phenomenon
        placebo: Callable | None = None

    def placebo(model, *, seed=0, label=None):
        return _prev_token_run(model, seed=seed + 100, label=label)

    placebo.n_draws = 5  # type: ignore[attr-defined]
    PHENOMENA["toy_placebo"] = WithPlacebo("toy_placebo", "toy with a placebo", run=_prev_token_run,
                                           placebo=placebo)
    try:
        rep = wb.replicate(checkpoints[:1], ["toy_placebo"], controls=["placebo"], out=tmp_path, progress=False)
    finally:
        PHENOMENA.pop("toy_placebo")
    frame = rep.to_frame()
    assert list(frame["control"]) == ["none", "placebo"] and (frame["status"] == "ok").all()
    assert "placebo of toy_placebo: 5 draws" in rep.notes


# ------------------------------------------------------------------ every phenomenon
def test_every_phenomenon_produces_findings_on_a_tiny_checkpoint_with_a_real_tokenizer(toys, checkpoints,
                                                                                      tmp_path):
    """Every registered phenomenon with a run() (the toys, and each real one once it registers
    its run()) gives findings on a tiny random checkpoint; ``not measured`` counts."""
    names = [n for n, p in PHENOMENA.items() if p.run is not None]
    rep = wb.replicate(checkpoints[:1], names, controls=["random-init"], out=tmp_path, progress=False)
    frame = rep.to_frame()
    assert rep.failed == 0, frame.loc[frame["status"] == "failed", ["phenomenon", "error"]].to_string()
    for name in names:
        mine = frame[frame["phenomenon"] == name]
        assert len(mine) and (mine["status"] == "ok").all() and (mine["claim"] != "").all(), name
        assert set(mine["verdict"]) <= set(VERDICTS), name
