"""The package as a wheel: built from the repo, installed outside the checkout, it finds its data
(data/ at the top of the repository, mapped to the package workbench.data by pyproject.toml)."""

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent(
    """
    import workbench
    from workbench.core.resources import data_path
    from workbench.viz.interactive import script
    assert "wbViews" in script()  # the views' drawing script ships as package data
    assert data_path("nbconvert", "offline", "index.html.j2").is_file()  # the offline export template
    from workbench import sae, toy
    from workbench.phenomena.retrieval import dataset as retrieval
    from workbench.phenomena.temporal import dataset as temporal
    assert workbench.__file__.startswith(TARGET), workbench.__file__
    from workbench.core.resources import data_path
    assert str(data_path()).startswith(TARGET), data_path()
    assert data_path("toy", "README.md").is_file()
    assert retrieval.FILLER_PATH.read_text().strip()
    assert temporal.FACTS_PATH.read_text().strip().startswith(("[", "{"))
    assert len(sae.load_corpus("heldout")) > 0
    shipped = sae.load_sae("smollm2-135m")
    assert shipped.cfg.d_in == 576, shipped.cfg.d_in
    model = toy.load_toy_model(train_if_missing=False)
    assert model.cfg.n_layers >= 1
    print("ok")
    """
)


def test_every_package_is_listed_and_the_data_is_mapped():
    """pyproject.toml lists the packages (a find directive cannot add the mapped workbench.data):
    the list must hold every package under workbench/, or the wheel would leave one out."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(str(ROOT), include=["workbench", "workbench.*"]))
    assert set(config["packages"]) == found | {"workbench.data"}
    assert config["package-dir"] == {"workbench.data": "data"}
    assert (ROOT / "data" / "__init__.py").is_file()
    assert not (ROOT / "workbench" / "data").exists()


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_finds_its_data(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        check=True, capture_output=True,
    )
    (wheel,) = wheels.glob("workbench-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True,
    )
    out = subprocess.run(
        [sys.executable, "-c", f"TARGET = {str(target)!r}\n" + CHECK],
        cwd=tmp_path, env={"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
