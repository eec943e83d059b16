"""The tool commands plug into `pipeline.cli` the way `train-text` does: `add_arguments` and `main_from_args`."""

from __future__ import annotations

import argparse
import importlib

import pytest

from pipeline.tools import TOOL_COMMANDS


@pytest.mark.parametrize("command", sorted(TOOL_COMMANDS))
def test_each_command_builds_its_parser_and_help(command):
    module_name, help_ = TOOL_COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m pipeline {command}", description=help_)
    module.add_arguments(parser)
    text = parser.format_help()
    assert f"python -m pipeline {command}" in text
    assert callable(module.main_from_args)
    assert help_.endswith(".") and len(help_) < 100


def test_a_missing_required_flag_is_an_argparse_error(capsys):
    module = importlib.import_module(TOOL_COMMANDS["neighbors"][0])
    parser = argparse.ArgumentParser(prog="python -m pipeline neighbors")
    module.add_arguments(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--embeddings", "DIR", "--id", "a", "--text", "b"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_commands_run_through_the_cli_once_registered(monkeypatch, tmp_path, capsys):
    import numpy as np
    from test_tools_support import write_run

    from pipeline import cli

    for name, entry in TOOL_COMMANDS.items():
        monkeypatch.setitem(cli.COMMANDS, name, entry)
    vectors = np.eye(4, dtype=np.float32) + 0.1
    run = write_run(tmp_path / "run", vectors, passthrough={"label": ["a", "a", "b", "b"]}, files=1)

    assert cli.main(["neighbors", "--embeddings", str(run), "--id", "image-0000", "-k", "2", "--json"]) == 0
    assert capsys.readouterr().out.count("\n") == 2
    assert cli.main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in TOOL_COMMANDS)
