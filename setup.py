"""Kept for Dataflow's `--setup_file ./setup.py`, which builds the staged package from this folder.

Everything about the package (name, version, dependencies from requirements.txt, the
`beam-embeddings` console script, packages) is declared in pyproject.toml; setuptools reads it
from there, so `pip install .` and `--setup_file ./setup.py` build the same package.
"""

import setuptools

setuptools.setup()
