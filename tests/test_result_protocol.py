"""One result protocol: every public result type has ``to_frame()``, ``plot()``, ``_repr_html_()``,
``save(path)`` and ``load(path)``, and a saved result loads back equal.

Each type gets a small instance (from the tiny model where a technique must run); the census at
the end finds every public class that a public function returns (and every public dataclass) and
fails when one is neither covered here nor listed as not being a result.
"""

import dataclasses
import importlib
import inspect
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import workbench as wb  # noqa: E402
from workbench import edges, models  # noqa: E402
from workbench.core.components import Circuit, HeadSet  # noqa: E402
from workbench.core.metrics import LogitDiff  # noqa: E402
from workbench.core.persist import Persistent, load_state  # noqa: E402
from workbench.core.results import Result  # noqa: E402
from workbench.findings.claims import Claim, Finding, Scorecard, evaluate, not_measured  # noqa: E402
from workbench.phenomena.arithmetic.analysis import TopVsRandom  # noqa: E402
from workbench.phenomena.atlas.analysis import HeadAtlas  # noqa: E402
from workbench.phenomena.ioi.circuits import CircuitChoice, IOIClasses  # noqa: E402
from workbench.phenomena.retrieval.analysis import MaskingResult  # noqa: E402
from workbench.replicate.report import Replication  # noqa: E402
from workbench.replicate.report import rows as replication_rows  # noqa: E402
from workbench.techniques import ablation, attribution, lens  # noqa: E402
from workbench.techniques.sae.features import LogitEffects  # noqa: E402
from workbench.techniques.sae.splicing import Splice  # noqa: E402
from workbench.techniques.tuned_lens import TunedLens, fit_tuned_lens

PKG = Path(wb.__file__).parent

# ------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def tiny():
    return models.tiny_model()


@pytest.fixture(scope="module")
def pair():
    gen = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 100, (3, 7), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(0, 100, (3,), generator=gen)
    return clean, corrupted


METRIC = LogitDiff(answers=[2, 3, 4], wrong=[5, 6, 7])
CLAIM = Claim("c", "the effect is large", paper="p", statistic="mean", threshold=0.5, weaker=0.2)


def _grid(seed: int, metric: str = "score") -> Result:
    values = torch.rand(2, 4, generator=torch.Generator().manual_seed(seed))
    return Result(values, ("layer", "head"), metric=metric, meta={"seed": seed, "shape": (2, 4)})


def _finding() -> Finding:
    return evaluate(CLAIM, torch.linspace(0.4, 1.2, 16), null=torch.linspace(0, 1, 50), n_select=4, note="n")


def _by_k(values, metric="accuracy") -> Result:
    return Result(torch.tensor(values), ("k",), metric=metric, labels={"k": [1, 2, 4]})


def _edge_graph(tiny, pair):
    return edges.attribute_edges(tiny, *pair, METRIC, method="eap").top_n(fraction=0.2)


# One builder per result type: (tiny model, token pair) -> a small instance.
BUILDERS = {
    TunedLens: lambda m, p: fit_tuned_lens(m, p[0], steps=2, lr=1e-2),
    Result: lambda m, p: Result(torch.tensor([[1.0, float("nan")], [3.0, 4.0]]), ("layer", "pos"), "x",
                                labels={"pos": ["a", "b"]}, meta={"model": "t", "opts": {1: (2, 3)}}),
    HeadSet: lambda m, p: HeadSet({(0, 1), (1, 3)}, "induction"),
    Circuit: lambda m, p: Circuit([(0, 1), (1, 2)], mlps=[1]),
    Finding: lambda m, p: _finding(),
    Scorecard: lambda m, p: Scorecard("tiny", "nb", [_finding(), not_measured(
        Claim("d", "d", paper="p", statistic="s", threshold=1.0), n_select=2, n_eval=3, note="none solved")]),
    lens.LensResult: lambda m, p: lens.logit_lens(m, p[0][:2], top_k=2),
    Replication: lambda m, p: Replication(replication_rows([{
        "job": {"phenomenon": "ioi", "model": "tiny", "model_hash": "ab12", "control": "none", "seed": 0,
                "code_hash": "c0de"}, "status": "ok", "findings": [_finding().to_dict()], "seconds": 1.0}]),
        computed=1, notes=["ran here"]),
    attribution.Attribution: lambda m, p: attribution.attribute(m, *p, METRIC),
    edges.Graph: _edge_graph,
    edges.FaithfulnessCurve: lambda m, p: edges.faithfulness_curve(
        m, *p, METRIC, graph=_edge_graph(m, p), fractions=(0.1, 0.5, 1.0), n_draws=1, seed=1),
    ablation.Faithfulness: lambda m, p: ablation.faithfulness(m, p[0], METRIC, [(0, 1), (1, 2)], reference=p[1]),
    ablation.Completeness: lambda m, p: ablation.completeness(m, p[0], METRIC, [(0, 1), (1, 2), 1], reference=p[1],
                                                              n_draws=2, progress=False),
    ablation.Minimality: lambda m, p: ablation.minimality(m, p[0], METRIC, [(0, 1), 1], reference=p[1],
                                                             progress=False),
    LogitEffects: lambda m, p: LogitEffects(Result(torch.linspace(-1, 1, 12), ("d_vocab",), "logit effect",
                                                   labels={"d_vocab": [f"t{i}" for i in range(12)]},
                                                   meta={"feature": 3}), k=3),
    Splice: lambda m, p: Splice(2.0, 2.5, 4.0, with_error=False, n_tokens=120),
    MaskingResult: lambda m, p: MaskingResult(
        [1, 2, 4], _by_k([0.8, 0.5, 0.2]), _by_k([0.9, 0.85, 0.8]), torch.tensor([[0.9, 0.8, 0.8], [0.9, 0.9, 0.8]]),
        0.95, [(1, 0), (0, 2), (1, 1), (0, 0)], [[(0, 1), (1, 2), (0, 3), (1, 3)]] * 2, 8, {"seed": 0}),
    TopVsRandom: lambda m, p: TopVsRandom(
        _by_k([0.7, 0.4, 0.1]), _by_k([0.9, 0.88, 0.8]), torch.tensor([[0.9, 0.9], [0.9, 0.86], [0.8, 0.8]]), 0.95,
        {1: [(1, 0)], 2: [(1, 0), (0, 2)], 4: [(1, 0), (0, 2), (1, 1), (0, 0)]},
        {1: [[(0, 1)], [(1, 3)]], 2: [[(0, 1), (1, 2)], [(1, 3), (0, 0)]], 4: [[(0, 1)] * 4] * 2}),
    HeadAtlas: lambda m, p: HeadAtlas(
        "toy", (2, 4), 2, {"induction": _grid(0, "induction"), "name mover": _grid(1, "name mover")},
        {"induction": HeadSet({(1, 0), (1, 2)}, "induction"), "name mover": HeadSet({(1, 2)}, "name mover")},
        {"induction": 1.5}),
    CircuitChoice: lambda m, p: CircuitChoice(
        {"name mover": HeadSet({(1, 0), (1, 1)}, "name mover"), "induction": HeadSet({(0, 2)}, "induction")},
        HeadSet({(1, 0), (0, 2), (0, 3)}, "circuit"), HeadSet({(0, 3)}, "fill"), HeadSet({(1, 1)}, "dropped"),
        3, _grid(2, "priority")),
    IOIClasses: lambda m, p: IOIClasses(
        {"name mover": HeadSet({(1, 0)}, "name mover"), "S-inhibition": HeadSet({(0, 2), (0, 3)}, "S-inhibition")},
        {"name mover": _grid(3), "S-inhibition": _grid(4)}, {"a": _grid(3), "b": _grid(4)},
        HeadSet({(0, 1)}, "S2")),
}


# ------------------------------------------------------------------ equality


def assert_same(a, b, where="result"):
    """Field by field: tensors with torch.equal (NaN equal to NaN), frames with pandas, floats NaN-aware."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.nan_to_num(0.5), b.nan_to_num(0.5)) and torch.equal(a.isnan(), b.isnan()), where
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
        assert a.attrs == b.attrs, where
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


# ------------------------------------------------------------------ the protocol, type by type


@pytest.fixture(scope="module")
def instances(tiny, pair):
    return {cls: build(tiny, pair) for cls, build in BUILDERS.items()}


@pytest.mark.parametrize("cls", list(BUILDERS), ids=lambda c: c.__name__)
def test_frame_html_and_plot(cls, instances):
    obj = instances[cls]
    assert type(obj) is cls
    frame = obj.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) > 0 and len(frame.columns) > 0
    assert isinstance(obj._repr_html_(), str) and "<" in obj._repr_html_()
    fig = obj.plot()
    assert isinstance(fig, (matplotlib.figure.Figure, matplotlib.axes.Axes))
    plt.close("all")


@pytest.mark.parametrize("cls", list(BUILDERS), ids=lambda c: c.__name__)
def test_save_load_round_trips(cls, instances, tmp_path):
    obj = instances[cls]
    path = obj.save(tmp_path / f"{cls.__name__}.pt")
    path = path[0] if isinstance(path, list) else path
    back = cls.load(path)
    assert_same(obj, back)
    # The file is plain containers: it loads without unpickling code, and names its class.
    payload = torch.load(path, weights_only=True)
    assert payload["class"] == cls.__name__ and payload["version"] == 1


def test_loading_a_file_of_another_class_is_refused(instances, tmp_path):
    path = instances[HeadSet].save(tmp_path / "h.pt")
    with pytest.raises(ValueError, match="holds a HeadSet, not a Circuit"):
        Circuit.load(path)
    (tmp_path / "junk.pt").write_text("not a result")
    with pytest.raises(ValueError, match="not a saved workbench result"):
        Result.load(tmp_path / "junk.pt")


def test_an_unsaveable_field_names_where_it_is(tmp_path):
    r = Result(torch.zeros(2), ("layer",), meta={"model": object()})
    with pytest.raises(TypeError, match=r"Result\['meta'\]\['model'\]"):
        r.save(tmp_path / "r.pt")


def test_scorecard_json_stays_findings_json_and_loads(instances, tmp_path):
    card = instances[Scorecard]
    path = card.save(tmp_path / "nb.findings.json")
    assert path.read_text().startswith("{")
    back = Scorecard.load(path)
    assert back.summary() == card.summary() and back.to_frame().equals(card.to_frame())
    # findings.json records the weaker bar and the amendment; the null level comes back as its default
    assert back.findings[0].claim == CLAIM
    assert_same(back.findings[1], card.findings[1])


def test_atlas_folder_save_is_unchanged_and_not_loadable(instances, tmp_path):
    paths = instances[HeadAtlas].save_report(tmp_path / "atlas")
    assert [p.name for p in paths] == ["atlas.png", "atlas_heads.csv", "atlas_overlaps.csv"]
    with pytest.raises(ValueError, match="report folder"):
        HeadAtlas.load(tmp_path / "atlas")


def test_load_state_reads_only_registered_classes(tmp_path):
    payload = {"format": "workbench-result", "version": 1, "class": "Result",
               "state": {"__wb__": "object", "cls": "Popen", "state": {}}}
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a saveable class"):
        load_state(Result, tmp_path / "evil.pt")


# ------------------------------------------------------------------ the census

#: Public classes that are not results, and why.
NOT_RESULTS = {
    "Claim": "a declaration, saved inside its Finding",
    "Layout": "the node layout, saved inside its Graph",
    "Readout": "a metric's description",
    "Normalised": "a metric", "LogitDiff": "a metric", "AnswerProb": "a metric", "AnswerRank": "a metric",
    "IOIDataset": "a dataset", "ArithmeticProblems": "a dataset", "SumProblems": "a dataset",
    "TemporalFacts": "a dataset", "Fact": "a dataset row", "Haystack": "a dataset", "Needle": "a dataset row",
    "ToyProblems": "a dataset", "ToyConfig": "a config", "InductionToyConfig": "a config", "OfflineModel": "a model description",
    "InputSite": "an engine detail", "EdgePatcher": "an engine", "Edit": "an engine intervention",
    "Base": "the engine's cached base run", "ModelReadout": "a model's read-out (final norm, unembedding)", "Exercise": "a course exercise",
    "LetterTokenizer": "a course tokenizer", "AttentionExplorer": "a widget", "HTML": "a string shown as HTML",
    "Source": "a model source (models.registry)", "Role": "a registry entry", "Phenomenon": "a registry entry",
    "Registration": "a pre-registration (claims.toml and its lock file)",
    "Lens": "a way of reading the residual stream (the logit lens has no state)",
    "View": "an interactive figure of a result (saved as an HTML page)",
    "CaseLog": "a course checker's record of one check (shown as its message)",
    "Job": "a unit of work of a replication (its findings are stored by the results store)",
    "Plan": "the jobs of a replication before they run",
    "NeedleSplit": "a dataset half", "RepeatedSequences": "a dataset half",
    "RetrievalSelection": "an experiment step's record (its findings are the Scorecard)",
    "RetrievalMasking": "an experiment step's record (its findings are the Scorecard)",
    "InductionSelection": "an experiment step's record (its findings are the Scorecard)",
    "CrossMeasurement": "an experiment step's record (its findings are the Scorecard)",
    "Setting": "a split-size setting of a phenomenon's design (circuit discovery)",
    "Measurement": "one setting's raw per-prompt rows, saved as the Scorecard and FaithfulnessCurves built from them",
    "TemporalData": "a dataset (03's prepared parts)", "ArithmeticData": "a dataset (04's prepared parts)",
    "TemporalSelection": "a step's chosen heads", "ArithmeticSelection": "a step's chosen heads",
    "TemporalMeasures": "a step's findings (the Scorecard holds them)", "ArithmeticMeasures": "a step's findings (the Scorecard holds them)",
}

PROTOCOL = ("to_frame", "plot", "_repr_html_", "save", "load")


def _modules():
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        if "data" in parts or parts[-1] == "__main__":
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield importlib.import_module(name)


def _public_classes_and_returns():
    classes, returned = {}, set()
    for mod in _modules():
        for name, obj in vars(mod).items():
            if name.startswith("_"):
                continue
            if inspect.isclass(obj) and obj.__module__ == mod.__name__ and not issubclass(obj, BaseException):
                classes[name] = obj
                functions = [f for n, f in vars(obj).items() if not n.startswith("_")]
            elif inspect.isfunction(obj) and obj.__module__ == mod.__name__:
                functions = [obj]
            else:
                continue
            for f in functions:
                f = f.__func__ if isinstance(f, (classmethod, staticmethod)) else f
                if inspect.isfunction(f):
                    returned.update(re.findall(r"[A-Za-z_]\w*", str(inspect.signature(f).return_annotation)))
    return classes, returned


def test_every_public_result_class_follows_the_protocol():
    classes, returned = _public_classes_and_returns()
    results = {n: c for n, c in classes.items()
               if (dataclasses.is_dataclass(c) or n in returned) and n not in NOT_RESULTS}
    missing = {n: [m for m in PROTOCOL if not callable(getattr(c, m, None))] for n, c in results.items()}
    missing = {n: ms for n, ms in missing.items() if ms}
    assert not missing, f"result classes without the protocol: {missing}"
    not_classmethod = [n for n, c in results.items() if not inspect.ismethod(c.load)]
    assert not not_classmethod, f"load must be a classmethod: {not_classmethod}"
    assert not [n for n, c in results.items() if not issubclass(c, Persistent)]
    untested = sorted(set(results) - {c.__name__ for c in BUILDERS})
    assert not untested, f"result classes with no round-trip test here: {untested}"
    assert "Circuit" in results and "Scorecard" in results  # the census finds non-dataclasses and dataclasses
    assert set(NOT_RESULTS) <= set(classes), sorted(set(NOT_RESULTS) - set(classes))  # no stale exemption
