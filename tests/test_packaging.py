"""The package as `pip install .` builds it: metadata from pyproject.toml, the console script."""

import email
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from pipeline import __version__
from tests.tests_support import PROJECT_ROOT

SOURCES = ("pyproject.toml", "setup.py", "README.md", "requirements.txt", "MANIFEST.in", "pipeline", "transforms")


def _requirements() -> list[str]:
    lines = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A wheel built from a copy of the project (offline: this environment's setuptools), installed
    into a folder of its own, as `pip install .` would put it into a virtualenv."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        path = PROJECT_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = subprocess.run(
        pip + ["wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((root / "dist").glob("*.whl"))
    site = root / "site"
    done = subprocess.run(
        pip + ["install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"wheel": wheel, "site": site, "root": root}


def _script(installed, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(installed["site"]))
    return subprocess.run(
        [str(installed["site"] / "bin" / "beam-embeddings"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=installed["root"],
        timeout=300,
    )


@pytest.mark.slow
def test_wheel_metadata_comes_from_pyproject_and_requirements(installed):
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(wheel.read(name))
        modules = {n.split("/")[0] for n in wheel.namelist() if n.endswith(".py")}
    assert metadata["Name"] == "beam-embeddings"
    assert metadata["Version"] == __version__
    requires = metadata.get_all("Requires-Dist")
    assert [r for r in requires if "extra ==" not in r] == _requirements()  # the pins, one source
    assert any(r.startswith("faiss-cpu") and 'extra == "faiss"' in r for r in requires)
    assert modules == {"pipeline", "transforms"}  # no tests or benchmarks shipped


@pytest.mark.slow
def test_console_script_runs_from_the_installed_package(installed):
    version = _script(installed, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"beam-embeddings {__version__}"
    helped = _script(installed, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "run " in helped.stdout and "train-text" in helped.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(installed["site"])),
        cwd=installed["root"],
    )
    assert where.stdout.strip().startswith(str(installed["site"]))  # the installed copy, not the checkout
