"""The embedding job: command line, options, pipeline graph and training commands."""

__version__ = "0.1.0"  # the one version: pyproject.toml and setup.py read it, `--version` prints it
