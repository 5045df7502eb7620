"""Command line: re-run a notebook on another model, list models.

    workbench models
    workbench run 01_ioi_circuit --model gemma-3-270m [--param N_PROMPTS=40 ...]
    workbench run 02 --model ~/models/my-llama [--device cuda] [--dtype bfloat16]
    workbench run 02 --model ./SmolLM2.Q8_0.gguf
    workbench run all --model smollm2-135m
    workbench run 01 --random-init            (negative control: the same architecture, random weights)
    workbench atlas --model gemma-3-270m      (the head atlas: PNG + CSV under reports/<model>/atlas)
    workbench replicate --models smollm2-135m gemma-3-270m --controls random-init
                                              (every phenomenon on every model: reports/replication/)
    python -m workbench run ...               (the same)

``--model`` is an offline model, a TransformerLens name, a checkpoint folder or a ``.gguf`` file
(see :func:`workbench.models.load_model`); ``--device`` and ``--dtype`` are passed to the notebook
as its ``DEVICE`` and ``DTYPE`` parameters. ``run`` executes the notebook headless with these
injected after its cell tagged ``parameters``, and writes under ``reports/<name>/`` (the model's
name; for a folder or file ``<folder or file name>-<8 hex digits of its absolute path>``, so two
checkpoints called ``final`` do not share a report): the executed notebook, an HTML export and
every figure as PNG. Outputs are written to a temporary folder and moved into place only when the
whole notebook succeeded; a failing run leaves ``<name>.FAILED.ipynb`` (and removes any older
complete report of that notebook), so a half-run report never looks complete. The printed summary
is the text output of the cells tagged ``findings``.

A notebook whose parameters cell defines ``FINDINGS_PATH`` gets it set (unless ``--param`` sets
it) so that its scorecard is written as ``reports/<model>/<notebook>.findings.json``, moved into
place with the rest of the report. ``--random-init`` runs the notebook on the negative control
(:func:`workbench.models.random_init_model`: the model's architecture and tokenizer with
random weights) and reports under ``reports/<model>-random-init/``.
"""

from __future__ import annotations

import argparse
import ast
import base64
import os
import re
import shutil
import sys
import time
from pathlib import Path

__all__ = [
    "main",
    "run_notebook",
    "export_html",
    "run_atlas",
    "notebooks_dir",
    "find_notebook",
    "check_model_name",
    "report_name",
]


def notebooks_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "notebooks"


def _all_notebooks() -> list[Path]:
    return sorted(p for p in notebooks_dir().glob("[0-9][0-9]*_*.ipynb"))  # 00_, 00b_, 01_, ...


def find_notebook(name: str) -> Path:
    """A notebook by path, file name, stem, number prefix (``01``) or the name of the phenomenon
    it tells the story of (``retrieval``, from :mod:`workbench.phenomena.registry`)."""
    from workbench.phenomena import registry

    p = Path(name)
    if p.suffix == ".ipynb" and p.exists():
        return p.resolve()
    if name in registry.PHENOMENA and registry.PHENOMENA[name].notebook:
        name = str(registry.PHENOMENA[name].notebook)
    for nb in _all_notebooks():
        if name in (nb.name, nb.stem) or nb.stem.split("_", 1)[0] == name:
            return nb
    known = ", ".join(nb.stem for nb in _all_notebooks())
    phenomena = ", ".join(n for n, ph in registry.PHENOMENA.items() if ph.notebook)
    raise SystemExit(f"Unknown notebook {name!r}. Known notebooks: {known}; phenomena: {phenomena}; or 'all'.")


def check_model_name(name: str) -> str:
    """Fail at once, before any kernel starts, on a model nothing could load; return the name
    to pass to the notebook (a local path made absolute, since notebooks run in their folder).

    The source's kind comes from :func:`workbench.models.registry.resolve` (offline models,
    checkpoint folders, ``.gguf`` files, TransformerLens names, hub repositories); each kind checks
    itself cheaply. A hub repository (``org/name``) passes with a note; a hub model that cannot be
    downloaded fails later, when the notebook loads it.
    """
    from workbench import models
    from workbench.models.registry import resolve

    try:
        source = resolve(name)
        checked = source.check()
    except (models.ModelNotAvailableError, models.CheckpointError) as e:
        raise SystemExit(f"Model {name!r}: {e}") from None
    if source.kind == "hub":
        print(f"Note: {name!r} is not a name TransformerLens knows; its files will be fetched "
              "from the hub (which must be reachable) and loaded as a folder.", file=sys.stderr)
    return checked


def report_name(model: str) -> str:
    """The report folder's name: a model name as it is (``/`` made ``--``); for a local path,
    its folder or file name and 8 hex digits of the absolute path."""
    from workbench.models.registry import resolve

    try:
        return resolve(model).report_name()
    except Exception:  # a name no source claims still gets a folder-safe report name
        return re.sub(r"[^A-Za-z0-9._-]+", "-", model.replace("/", "--")).strip("-") or "model"


def _parse_params(pairs: list[str]) -> dict[str, object]:
    params = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"--param takes KEY=VALUE with KEY a Python name, got {pair!r}.")
        try:
            params[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            params[key] = raw  # a bare word is a string
    return params


def _parameter_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _inject(nb, params: dict[str, object]) -> int:
    """Insert a cell setting ``params`` after the cell tagged 'parameters'; return its index."""
    import nbformat

    index = next(
        (i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])),
        None,
    )
    if index is None:
        raise SystemExit("This notebook has no cell tagged 'parameters' to inject the model into.")
    allowed = _parameter_names(nb.cells[index].source)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise SystemExit(
            f"Unknown parameter(s) {unknown}; this notebook's parameters are {sorted(allowed)}."
        )
    source = "# Parameters injected by `workbench run`\n" + "\n".join(
        f"{k} = {v!r}" for k, v in params.items()
    )
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)
    return index + 1


RANDOM_INIT_SUFFIX = "-random-init"


def _random_init_cell(model: str, seed: int):
    """A cell that makes ``wb.load_model`` return the randomly initialised control model."""
    import nbformat

    source = (
        "# Negative control injected by `workbench run --random-init`: random weights, same architecture\n"
        "import workbench as _wb\n"
        "from workbench.models import random_init_model as _random_init_model\n"
        f"_control = _random_init_model({model!r}, seed={seed!r})\n"
        "_wb.load_model = lambda *args, **kwargs: _control\n"
    )
    return nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-random-init"]})


def _read_notebook(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def _figures(nb, stem: str, folder: Path) -> list[Path]:
    written = []
    for i, cell in enumerate(nb.cells):
        for k, out in enumerate(cell.get("outputs", [])):
            data = out.get("data", {})
            if "image/png" in data:
                path = folder / f"{stem}-cell{i:02d}-{k}.png"
                path.write_bytes(base64.b64decode(data["image/png"]))
                written.append(path)
    return written


def _findings(nb) -> str:
    lines = []
    for cell in nb.cells:
        if "findings" not in cell.get("metadata", {}).get("tags", []):
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                lines.append(out["text"].rstrip())
            elif "text/plain" in out.get("data", {}):
                lines.append(out["data"]["text/plain"].rstrip())
    return "\n".join(lines)


def export_html(nb) -> str:
    """The HTML report of an executed notebook, referencing no CDN, so it opens from disk with the
    network off: JupyterLab's template without require.js, MathJax (TeX shows as source), the
    widgets manager (widget outputs are not drawn) or mermaid; interactive views
    (:mod:`workbench.viz.interactive`) carry their own script and still draw."""
    from nbconvert import HTMLExporter

    from workbench.core.resources import data_path

    exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(data_path("nbconvert"))])
    return exporter.from_notebook_node(nb)[0]


def _prepare(nb, model: str, params: dict[str, object], findings: Path, *, random_init: bool,
             random_seed: int) -> bool:
    """Inject the parameters (and the random-init cell) into ``nb``; whether the notebook writes
    its findings to ``findings``."""
    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    injected = {"MODEL": model, **params}
    wants_findings = index is not None and "FINDINGS_PATH" in _parameter_names(nb.cells[index].source)
    wants_findings = wants_findings and "FINDINGS_PATH" not in params
    if wants_findings:  # written by the notebook's last cell; removed again if the run fails
        injected["FINDINGS_PATH"] = str(findings.resolve())
    injected_at = _inject(nb, injected)
    if random_init:
        nb.cells.insert(injected_at + 1, _random_init_cell(model, random_seed))
    return wants_findings


def _clear(report: Path, tmp: Path, stem: str, findings_name: str) -> None:
    """A fresh temporary folder; the notebook's earlier outputs in ``report`` removed."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for stale in [report / f"{stem}.ipynb", report / f"{stem}.html", report / f"{stem}.FAILED.ipynb",
                  report / findings_name]:
        stale.unlink(missing_ok=True)
    for stale in (report / "figures").glob(f"{stem}-cell*.png"):
        stale.unlink()


def _execute(nb, notebook: Path, model: str, report: Path, tmp: Path, findings_name: str,
             timeout: int) -> float:
    """Run ``nb`` in place; the seconds it took. On a failing cell: write ``<stem>.FAILED.ipynb``,
    clean up, and raise SystemExit naming the cell."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    stem = notebook.stem
    env_backup = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures as PNG
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        failed = next(
            (i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))),
            None,
        )
        nbformat.write(nb, report / f"{stem}.FAILED.ipynb")
        (report / findings_name).unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        first_line = nb.cells[failed].source.splitlines()[0] if failed is not None else "?"
        raise SystemExit(
            f"{notebook.name} failed in cell {failed} ({first_line!r}) on {model}:\n"
            f"{str(e).strip().splitlines()[-1]}\nPartial notebook: {report / (stem + '.FAILED.ipynb')}"
        ) from None
    finally:
        if env_backup is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = env_backup
    return time.perf_counter() - start


def _publish(nb, notebook: Path, model: str, report: Path, tmp: Path, findings_name: str,
             wants_findings: bool) -> None:
    """Write the executed notebook, its HTML and figures to ``tmp``, then move them into ``report``
    (the notebook last, which marks the report complete)."""
    import nbformat

    stem = notebook.stem
    nbformat.write(nb, tmp / f"{stem}.ipynb")
    (tmp / f"{stem}.html").write_text(export_html(nb))
    (tmp / "figures").mkdir()
    _figures(nb, stem, tmp / "figures")
    # Everything exists: move it into place.
    (report / "figures").mkdir(exist_ok=True)
    for fig in (tmp / "figures").iterdir():
        fig.replace(report / "figures" / fig.name)
    (tmp / f"{stem}.html").replace(report / f"{stem}.html")
    if wants_findings and not (report / findings_name).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"{notebook.name} ran on {model} but wrote no {findings_name} (does its last "
                         "cell call card.save(FINDINGS_PATH)?)")
    (tmp / f"{stem}.ipynb").replace(report / f"{stem}.ipynb")  # last: marks the report complete
    shutil.rmtree(tmp, ignore_errors=True)


def run_notebook(
    notebook: Path,
    model: str,
    params: dict[str, object],
    out_root: Path,
    timeout: int = 3600,
    *,
    random_init: bool = False,
    random_seed: int = 0,
) -> Path:
    """Execute one notebook; return the report folder. Raises SystemExit naming a failing cell.

    ``random_init``: run on :func:`workbench.models.random_init_model` of ``model`` (seeded by
    ``random_seed``); the report goes to ``<model>-random-init``.
    """
    import nbformat

    stem = notebook.stem
    nb = nbformat.read(notebook, as_version=4)
    report = out_root / (report_name(model) + (RANDOM_INIT_SUFFIX if random_init else ""))
    report.mkdir(parents=True, exist_ok=True)
    tmp = report / f".{stem}.partial"
    findings_name = f"{stem}.findings.json"
    wants_findings = _prepare(nb, model, params, report / findings_name, random_init=random_init,
                              random_seed=random_seed)
    _clear(report, tmp, stem, findings_name)
    elapsed = _execute(nb, notebook, model, report, tmp, findings_name, timeout)
    _publish(nb, notebook, model, report, tmp, findings_name, wants_findings)
    print(f"== {stem} on {model}: {elapsed:.0f} s -> {report / (stem + '.ipynb')}")
    summary = _findings(nb)
    if summary:
        print(summary)
    return report


def run_atlas(
    model_name: str, out_root: Path, k: int | None = None, *, device: str | None = None,
    dtype: str | None = None,
) -> list[Path]:
    """Build the head atlas of ``model_name`` and save it under ``out_root/<report name>/atlas``."""
    from workbench import models
    from workbench.phenomena.atlas import analysis as atlas

    model = models.load_model(model_name, device=device, dtype=dtype)
    start = time.perf_counter()
    result = atlas.head_atlas(model, k=k, model_name=model.cfg.model_name)
    paths = result.save_report(out_root / report_name(model_name) / "atlas")
    print(f"== head atlas of {model_name}: {time.perf_counter() - start:.0f} s -> {paths[0].parent}")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 2):
        print(result.overlaps().drop(columns=["heads"]).to_string(index=False))
    return paths


MODEL_HELP = "offline model, TransformerLens name, checkpoint folder or .gguf file (default: smollm2-135m)"
DEVICE_HELP = "cpu (default), cuda, cuda:N, mps or auto"
DTYPE_HELP = "float32 (default), bfloat16 or float16"


def _device_params(device: str | None, dtype: str | None) -> dict[str, object]:
    """``DEVICE`` / ``DTYPE`` notebook parameters, checked here so a typo fails before any run."""
    from workbench import models

    params: dict[str, object] = {}
    for name, value, check in (("DEVICE", device, models.resolve_device), ("DTYPE", dtype, models.resolve_dtype)):
        if value is not None:
            try:
                check(value)
            except ValueError as e:
                raise SystemExit(str(e)) from None
            params[name] = value
    return params


def claims_command(action: str, phenomenon: str, claim: str | None, reason: str) -> int:
    """``workbench claims check|lock|amend``: see :mod:`workbench.findings.preregistration`."""
    from workbench.findings import preregistration
    from workbench.phenomena import registry

    if Path(phenomenon).is_dir():
        where: str | Path = Path(phenomenon)
    else:
        where = registry.get(phenomenon).claims or ""
        if not where:
            raise SystemExit(f"Phenomenon {phenomenon!r} declares no claims.")
    try:
        if action == "check":
            trouble = preregistration.problems(where)
            print("\n".join(trouble) or "every claim matches its registration")
            return 1 if trouble else 0
        if action == "lock":
            new = preregistration.lock(where)
            print(f"registered: {', '.join(new)}" if new else "nothing new to register")
            return 0
        if claim is None:
            raise SystemExit("amend needs the claim's name: workbench claims amend PHENOMENON CLAIM --reason ...")
        preregistration.amend(where, claim, reason)
        print(f"amended {claim}: {reason}")
        return 0
    except ValueError as e:
        raise SystemExit(str(e)) from None


def _shared_options() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Parent parsers of the options several commands take: the model's, and the report folder."""
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", default=None, help=MODEL_HELP)
    model.add_argument("--device", default=None, help=DEVICE_HELP)
    model.add_argument("--dtype", default=None, help=DTYPE_HELP)
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--out", default="reports", help="report folder (default: reports/)")
    return model, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the offline models and every cached conversion")
    model_options, out_option = _shared_options()
    run = sub.add_parser("run", help="execute a notebook (or 'all') on a model", parents=[model_options, out_option])
    run.add_argument("notebook", help="notebook name, number, path, or 'all'")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--random-init", action="store_true",
                     help="negative control: the model's architecture and tokenizer with random weights")
    run.add_argument("--random-seed", type=int, default=0, help="seed of the random weights (default 0)")
    at = sub.add_parser("atlas", help="map the heads of every phenomenon on a model (PNG + CSV)",
                        parents=[model_options, out_option])
    at.add_argument("--k", type=int, default=None, help="heads per role (default: 3%% of heads, at least 3)")
    cl = sub.add_parser("claims", help="check, register or amend a phenomenon's pre-registered claims")
    cl.add_argument("action", choices=["check", "lock", "amend"])
    cl.add_argument("phenomenon", help="a registered phenomenon (ioi, retrieval, ...) or a folder with claims.toml")
    cl.add_argument("claim", nargs="?", help="the claim to amend")
    cl.add_argument("--reason", default="", help="why the claim changed (amend)")
    from workbench.course import cli as course_cli
    from workbench.replicate import cli as replicate_cli

    course_cli.add_parser(sub)
    replicate_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "course":
        return course_cli.main(args)
    if args.command == "replicate":
        return replicate_cli.main(args)
    if args.command == "claims":
        return claims_command(args.action, args.phenomenon, args.claim, args.reason)

    from workbench import models
    from workbench.models.registry import resolve

    if args.command == "models":
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(models.list_models().drop(columns=["packages"]))
        print(f"Cache: {models.cache_dir()}")
        return 0

    model = check_model_name(args.model or models.DEFAULT_MODEL)
    device_params = _device_params(args.device, args.dtype)
    if args.command == "atlas":
        run_atlas(model, Path(args.out), k=args.k, device=args.device, dtype=args.dtype)
        return 0
    if resolve(model).kind == "transformerlens":
        print(
            f"Note: {model!r} is not an offline model; it will load through TransformerLens "
            f"if its weights are reachable (offline models: {', '.join(models.OFFLINE_MODELS)}).",
            file=sys.stderr,
        )
    targets = _all_notebooks() if args.notebook == "all" else [find_notebook(args.notebook)]
    params = {**device_params, **_parse_params(args.param)}
    for nb in targets:  # every parameter checked before the first notebook runs
        _inject(_read_notebook(nb), {"MODEL": model, **params})
    failed = []
    for nb in targets:
        try:
            run_notebook(nb, model, params, Path(args.out), random_init=args.random_init,
                         random_seed=args.random_seed)
        except SystemExit as e:
            if len(targets) == 1:
                raise
            print(e, file=sys.stderr)  # go on with the other notebooks; list failures at the end
            failed.append(nb.stem)
    if failed:
        print(f"{len(failed)} of {len(targets)} notebooks failed on {model}: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
