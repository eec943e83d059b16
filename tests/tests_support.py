"""Shared constants for tests (importable, unlike conftest)."""

import pathlib

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
