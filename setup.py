"""Kept for Dataflow's `--setup_file ./setup.py`, which builds the staged package from this folder.

Everything about the package (name, version, dependencies, the `beam-embeddings` console script,
packages) is declared in pyproject.toml; setuptools reads it from there, so `pip install .` and
`--setup_file ./setup.py` build the same package. Its dependencies are compatible ranges (so that
it installs beside what a machine already has, macOS arm64 included); the exact versions are
requirements.txt, which Dataflow workers install too: pass `--requirements_file requirements.txt
--requirements_cache skip` beside `--setup_file` (docs/dataflow.md), or use the worker image (Dockerfile).
"""

import setuptools

setuptools.setup()
