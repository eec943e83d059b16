"""Packaging for local installs and for Dataflow workers (`--setup_file ./setup.py`)."""

import pathlib
import re

import setuptools

HERE = pathlib.Path(__file__).parent


def _version():
    """`__version__` from pipeline/__init__.py, the one place it is written."""
    return re.search(r'^__version__ = "([^"]+)"', (HERE / "pipeline" / "__init__.py").read_text(), re.M).group(1)


def _requirements():
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setuptools.setup(
    name="beam-embeddings",
    version=_version(),
    description="Batch text and image embeddings with Apache Beam and Keras, written to Parquet.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*"]),
    install_requires=_requirements(),
    entry_points={"console_scripts": ["beam-embeddings=pipeline.cli:main"]},
    license="Apache-2.0",
)
