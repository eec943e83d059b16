"""The embedding job: command line, options, pipeline graph and training commands."""

__version__ = "0.1.0"  # the one place the version is written: setup.py and `--version` read it
