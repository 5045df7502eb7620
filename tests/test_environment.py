"""The pinned environment is described the same way everywhere."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"not an exact pin: {line!r}"
        out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_pyproject_pins_every_dependency_exactly():
    pins = _pins(_pyproject()["dependencies"])
    assert "torch" in pins and pins["torch"] == "2.13.0"
    assert pins["transformer-lens"].startswith("3."), "sae-lens needs the 3.x line"


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == _pins(_pyproject()["dependencies"])


def test_lock_agrees_with_pyproject():
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    for name, version in _pins(_pyproject()["dependencies"]).items():
        assert lock.get(name) == version, f"{name}: pyproject {version}, lock {lock.get(name)}"


def test_model_packages_match_optional_dependencies():
    models = _pins((ROOT / "requirements-models.txt").read_text().splitlines())
    assert models == _pins(_pyproject()["optional-dependencies"]["models"])


def test_network_is_blocked_for_tests_but_loopback_works():
    import socket

    from conftest import NetworkBlocked

    with pytest.raises(NetworkBlocked, match="offline"):
        socket.create_connection(("203.0.113.7", 443), timeout=1)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.close()
    server.close()
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
