"""The package as `pip install .` builds it: metadata from pyproject.toml, the console script, and
its dependencies: compatible ranges in pyproject.toml, the exact lock in requirements.txt, both
resolvable for Linux x86_64 and macOS arm64 (the resolution check needs the package index: it
skips with the reason where the index is unreachable, and runs in CI)."""

import email
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline import __version__
from tests.tests_support import PROJECT_ROOT

SOURCES = ("pyproject.toml", "setup.py", "README.md", "requirements.txt", "MANIFEST.in", "pipeline", "transforms")


def _requirements() -> list[str]:
    """requirements.txt's lines: the exact lock."""
    lines = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _ranges() -> list[str]:
    """pyproject.toml's dependencies: what `pip install .` asks for."""
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


# Marker environments of the two platforms every dependency must install on (Python 3.11).
PLATFORMS = {
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
}
PYTHON = {"python_version": "3.11", "python_full_version": "3.11.9", "implementation_name": "cpython", "os_name": "posix"}


def _for_platform(lines: list[str], platform: str) -> dict[str, Requirement]:
    """The requirements whose markers hold on `platform`, by canonical name."""
    environment = {**PYTHON, **PLATFORMS[platform], "extra": ""}
    chosen = {}
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            chosen[canonicalize_name(requirement.name)] = requirement
    return chosen


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_the_lock_satisfies_the_ranges_on_each_platform(platform):
    ranges, lock = _for_platform(_ranges(), platform), _for_platform(_requirements(), platform)
    assert sorted(ranges) == sorted(lock)  # the same packages, TensorFlow's included
    for name, requirement in lock.items():
        (pin,) = requirement.specifier  # one exact pin per package
        assert pin.operator == "==", requirement
        assert ranges[name].specifier.contains(pin.version), (str(requirement), str(ranges[name]))
        assert requirement.extras == ranges[name].extras
    # tensorflow-cpu only where it has wheels (Linux x86_64); the `tensorflow` CPU build elsewhere.
    tensorflow = "tensorflow-cpu" if platform == "linux-x86_64" else "tensorflow"
    assert tensorflow in lock and ({"tensorflow", "tensorflow-cpu"} - {tensorflow}).isdisjoint(lock)


# Built from source on every platform: pure-Python packages that publish no wheel (apache-beam[gcp]
# needs google-apitools 0.5.31, an sdist only). Everything else must come as a wheel for the platform.
SOURCE_ONLY = ("google-apitools",)
UV_PLATFORMS = {"linux-x86_64": "x86_64-manylinux_2_28", "macos-arm64": "aarch64-apple-darwin"}
_UNREACHABLE = ("error sending request", "failed to fetch", "dns error", "connection refused", "timed out", "network")


@pytest.mark.slow
@pytest.mark.parametrize("platform", sorted(UV_PLATFORMS))
@pytest.mark.parametrize("source", ["pyproject.toml", "requirements.txt"])
def test_dependencies_resolve_to_wheels_on_each_platform(platform, source, tmp_path):
    """`pip install .` (the ranges) and `pip install -r requirements.txt` (the lock) on Linux x86_64
    and on a macOS 12 arm64 laptop: resolved by uv for that platform (pip's --platform still
    evaluates markers for the machine it runs on), binary wheels only but for SOURCE_ONLY."""
    try:
        import uv
    except ImportError:
        pytest.skip("uv is not installed (pip install -r requirements-dev.txt)")
    wanted = tmp_path / "requirements.in"
    wanted.write_text("\n".join(_ranges() if source == "pyproject.toml" else _requirements()) + "\n")
    locked = tmp_path / "resolved.txt"
    command = [uv.find_uv_bin(), "pip", "compile", "--no-config", "--quiet", "--python-version", "3.11"]
    command += ["--python-platform", UV_PLATFORMS[platform], "--only-binary", ":all:"]
    command += [flag for name in SOURCE_ONLY for flag in ("--no-binary", name)]
    command += [str(wanted), "-o", str(locked)]
    env = dict(os.environ, MACOSX_DEPLOYMENT_TARGET="12.0")  # wheels a macOS 12 machine can install
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    if done.returncode != 0 and any(word in done.stderr.lower() for word in _UNREACHABLE):
        pytest.skip(f"the package index is unreachable from here: {done.stderr.strip().splitlines()[-1][:200]}")
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {}
    for line in locked.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            resolved[canonicalize_name(name.split("[")[0])] = version.split(";")[0].strip()
    tensorflow = "tensorflow-cpu" if platform == "linux-x86_64" else "tensorflow"
    assert tensorflow in resolved and ({"tensorflow", "tensorflow-cpu"} - {tensorflow}).isdisjoint(resolved)
    for name, requirement in _for_platform(_requirements() if source == "requirements.txt" else _ranges(), platform).items():
        assert requirement.specifier.contains(resolved[name]), (str(requirement), resolved[name])


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
def test_wheel_metadata_comes_from_pyproject(installed):
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(wheel.read(name))
        modules = {n.split("/")[0] for n in wheel.namelist() if n.endswith(".py")}
    assert metadata["Name"] == "beam-embeddings"
    assert metadata["Version"] == __version__
    requires = metadata.get_all("Requires-Dist")
    # The ranges (setuptools lists those with markers last).
    assert sorted(str(Requirement(r)) for r in requires if "extra ==" not in r) == sorted(str(Requirement(r)) for r in _ranges())
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
