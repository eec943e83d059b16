"""One place per flag (issue 21): each `run` flag is declared once, in one option view, with its
default; the JobConfig's defaults are those same declared defaults; and every launch check runs
before the output folder is claimed, so a refused run leaves an earlier run's folder byte-identical.
The trainers and the tools build their parsers from a FLAGS table each (`pipeline.command_flags`),
and a flag the tools share is declared once (`pipeline.tools.flags`).
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import importlib
import inspect
import json
import pathlib
import shutil

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import checks, cli, options
from pipeline.tools import TOOL_COMMANDS
from transforms.results import MANIFEST_NAME

OPTIONS_SOURCE = pathlib.Path(options.__file__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    options.EmbeddingJobOptions._add_argparse_args(parser)
    return parser


def test_each_flag_is_declared_once_in_one_view():
    declared = collections.Counter(flag.dest for view in options.JOB_VIEWS for flag in view.FLAGS)
    assert declared and max(declared.values()) == 1, [d for d, n in declared.items() if n > 1]
    actions = [a for a in _parser()._actions if a.option_strings]
    assert collections.Counter(a.dest for a in actions) == declared  # the parser is the views' flags, once each
    spellings = collections.Counter(s for a in actions for s in a.option_strings)
    assert max(spellings.values()) == 1
    for action in actions:  # dashes and underscores, as Beam re-creates options from underscore names
        assert f"--{action.dest}" in action.option_strings


def test_each_view_reads_its_own_flags_and_beam_parses_every_view_once():
    argv = ["--text-input", "a.jsonl", "--image_uri_field=path", "--normalize", "--max-failed", "3", "--text-batch-size", "8"]
    parsed = PipelineOptions(argv)
    assert parsed.view_as(options.InputOptions).text_input == ["a.jsonl"]
    assert parsed.view_as(options.InputOptions).image_uri_field == "path"
    assert parsed.view_as(options.OutputOptions).normalize is True
    assert parsed.view_as(options.RunOptions).max_failed == 3
    assert parsed.view_as(options.TextModelOptions).text_batch_size == 8
    assert parsed.view_as(options.EmbeddingJobOptions).text_batch_size == 8  # every view at once
    assert parsed.get_all_options()["image_uri_field"] == "path"  # Beam's own parser of all views: no conflict
    checks.check_unknown_flags(argv)


def test_the_job_configs_defaults_are_the_declared_defaults():
    parser = _parser()
    defaults = {action.dest: action.default for action in parser._actions if action.option_strings}
    converted = {
        "passthrough": options.parse_passthrough,
        "max_failed_fraction": options.parse_failed_fraction,
        "incremental_from": lambda values: tuple(values or ()),  # repeatable: a list of folders
    }
    compared = 0
    for field in dataclasses.fields(options.JobConfig):
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if field.name not in defaults or required:
            continue  # output and run_id (required), inputs and model specs (built from several flags)
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        assert default == converted.get(field.name, lambda v: v)(defaults[field.name]), field.name
        compared += 1
    assert compared >= 20
    # a config built from flags that set nothing optional is the dataclass with its defaults
    argv = ["--output", "/tmp/o", "--text-input", "/tmp/a.jsonl", "--text-model", "/tmp/m.keras", "--run-id", "r"]
    built = options.build_config(PipelineOptions(argv))
    assert built == options.JobConfig(output="/tmp/o", run_id="r", text_inputs=("/tmp/a.jsonl",), text_model=built.text_model)


def test_no_default_is_written_twice_in_the_options_code():
    """JobConfig takes its defaults from the flag table (no literal), and each literal default of the
    table's numbers is written once in options.py (256 << 20, 0.1, 45, ... are not copied), and no
    string default comes back as a fallback where the flag is read (`backend or "auto"`)."""
    tree = ast.parse(OPTIONS_SOURCE.read_text())
    [job_config] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "JobConfig"]
    for statement in job_config.body:
        if isinstance(statement, ast.AnnAssign) and statement.value is not None:
            literal = isinstance(statement.value, ast.Constant) and statement.value.value not in (None,)
            assert not literal, f"JobConfig.{statement.target.id} has a literal default: use declared_default"
    numbers = collections.Counter(
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and type(n.value) in (int, float)
    )
    fallbacks = {  # `value or "auto"`: a default written again where the flag is read
        n.values[-1].value for n in ast.walk(tree) if isinstance(n, ast.BoolOp) and isinstance(n.values[-1], ast.Constant)
    }
    for view in options.JOB_VIEWS:
        for flag in view.FLAGS:
            if type(flag.default) in (int, float):
                assert numbers[flag.default] <= 1, (flag.dest, flag.default)
            if isinstance(flag.default, str) and flag.default:
                assert flag.default not in fallbacks, (flag.dest, flag.default)
    assert "256 << 20" not in OPTIONS_SOURCE.read_text()


def test_help_texts_show_the_declared_defaults():
    by_dest = {a.dest: a for a in _parser()._actions}
    assert "(default: 268,435,456 = 256 MiB)" in by_dest["max_image_bytes"].help
    assert "(default: 0.1)" in by_dest["max_failed_fraction"].help
    assert "(default: 1024; at most 65,536)" in by_dest["text_batch_size"].help
    assert all("{default" not in (a.help or "") for a in by_dest.values())


# ---- every check before the output folder is claimed -----------------------------------------------


def _tree(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, tiny_text_model) -> dict:
    """A finished run (the folder each refused run is pointed at) and its input."""
    root = tmp_path_factory.mktemp("earlier")
    data = root / "reviews.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "text": f"good movie {i}", "stars": i % 5}) + "\n" for i in range(12)))
    run = root / "run"
    base = ["--text-input", str(data), "--text-model", str(tiny_text_model)]
    assert cli.main(["run", "--output", str(run), *base]) == 0
    assert (run / MANIFEST_NAME).exists()
    (root / "not-a-run").mkdir()
    return {"root": root, "run": run, "base": base}


BAD_COMBINATIONS = {
    "passthrough clashes with an output column": (["--passthrough", "embedded_run_id"], "--passthrough 'embedded_run_id'"),
    "carry-over without incremental-from": (["--carry-over"], "--carry-over"),
    "a text field no record has": (["--text-field", "body"], "--text-field 'body'"),
    "a passthrough field no record has": (["--passthrough", "lable"], "--passthrough 'lable'"),
    "a batch above its maximum": (["--text-batch-size", "100000"], "--text-batch-size"),
    "a failure budget above 1": (["--max-failed-fraction", "2"], "--max-failed-fraction"),
    "an unknown runner": (["--runner", "Bogus"], "--runner 'Bogus'"),
    "a dry_run value Beam reads as true": (["--dry_run", "no"], "--dry_run 'no'"),
    "an unknown encoding": (["--text-encoding", "nope"], "--text-encoding 'nope'"),
    "a local path for Dataflow": (["--runner", "DataflowRunner"], "a local path"),
    "an earlier run that is not one": (["--incremental-from", "{root}/not-a-run"], "--incremental-from"),
    "a model that does not load": (["--text-model", "{root}/missing.keras"], "--text-model"),
}


@pytest.mark.parametrize("case", BAD_COMBINATIONS)
def test_every_check_runs_before_the_output_folder_is_claimed(case, earlier, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(earlier["run"], out)
    before = _tree(out)
    flags, named = BAD_COMBINATIONS[case]
    flags = [f.format(root=earlier["root"]) for f in flags]
    assert cli.main(["run", "--output", str(out), *earlier["base"], *flags]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert named in line
    assert _tree(out) == before, "a refused run changed the folder of the earlier run"


# ---- the trainers' and the tools' flags (train-text, train-image, neighbors, evaluate, report, ...) -----------------------------------------------


def test_train_texts_skipgram_defaults_are_skipgram_settings():
    """--window, --negatives, --subsample and --skipgram-* default to SkipgramSettings' fields, which
    text.py does not write again: a config from flags that set none of them trains those settings."""
    from pipeline.train import text as train_text
    from pipeline.train.skipgram import SkipgramSettings

    args = cli.command_parser("train-text").parse_args(["--output", "m.keras", "--text-input", "x.jsonl"])
    config = train_text.TextTrainingConfig(output="m.keras", inputs=("x.jsonl",), objective="skipgram")
    assert config.skipgram_settings() == SkipgramSettings()
    defaults = SkipgramSettings()
    for flag_dest, field in (("skipgram_epochs", "epochs"), ("skipgram_batch_size", "batch_size"), ("window", "window")):
        assert getattr(args, flag_dest) == getattr(defaults, field)
    source = ast.parse(pathlib.Path(train_text.__file__).read_text())
    written = {n.value for n in ast.walk(source) if isinstance(n, ast.Constant) and type(n.value) in (int, float)}
    assert defaults.batch_size not in written and defaults.learning_rate not in written  # (1e-3 is also --sif-a's)


TRAINERS = {  # command -> (its config dataclass's name, the flags that are required)
    "train-text": ("TextTrainingConfig", ["--output", "m.keras", "--text-input", "x.jsonl"]),
    "train-image": ("ImageTrainingConfig", ["--output", "m.keras", "--image-input", "photos", "--base", "MobileNetV2"]),
}


def _trainer(command: str):
    """A trainer's or a tool's module and parser."""
    return importlib.import_module(cli.COMMANDS[command][0]), cli.command_parser(command)


TOOLS = sorted(TOOL_COMMANDS) + ["report"]  # the commands of pipeline/tools/
TOOLS_SOURCE = pathlib.Path(cli.__file__).parent / "tools"


@pytest.mark.parametrize("command", [*TRAINERS, *TOOLS])
def test_each_command_flag_is_declared_once_in_its_table_and_the_parser_is_that_table(command):
    """The trainers and the tools build their parsers from their `FLAGS` table (CommandFlag, the
    trainers' TrainFlag): each flag once, with the spellings, default and required-ness declared."""
    module, parser = _trainer(command)
    declared = collections.Counter(flag.key for flag in module.FLAGS)
    assert declared and max(declared.values()) == 1, [d for d, n in declared.items() if n > 1]
    own = [a for a in parser._actions if a.dest not in ("help", "verbose", "version")]
    assert collections.Counter(a.dest for a in own) == declared  # every flag of the parser comes from the table, once
    actions = {a.dest: a for a in own}
    spellings = collections.Counter(s for a in parser._actions for s in a.option_strings)
    assert max(spellings.values()) == 1
    for flag in module.FLAGS:
        action = actions[flag.key]
        assert action.option_strings == ([flag.name, *flag.aliases] if flag.name.startswith("-") else [])
        assert action.default == flag.default and action.required == flag.required
    assert "%(default" not in parser.format_help() and "(default: None)" not in parser.format_help()


def test_a_flag_the_tools_share_means_the_same_in_every_tool_and_is_spelled_in_one_place():
    """A spelling two tools take (--run, --modality, --allow-failed, --json, -k, --seed, --batch-rows,
    --output, --text-model, ...) takes the same type of value, action and choices in each; and
    each flag's name is written in one CommandFlag of pipeline/tools/ (the shared ones in flags.py)."""
    by_spelling = collections.defaultdict(list)
    for command in TOOLS:
        for action in cli.command_parser(command)._actions:
            for spelling in action.option_strings or [action.metavar]:
                by_spelling[spelling].append((command, action))
    shared = {
        s: found for s, found in by_spelling.items() if len(found) > 1 and s not in ("-h", "--help", "--verbose", "--version")
    }
    assert {"RUN", "--run", "--modality", "--allow-failed", "--json", "-k", "--seed", "--batch-rows", "--output"} <= set(shared)
    for spelling, found in shared.items():
        kinds = {(a.type, type(a).__name__, tuple(a.choices or ()), a.nargs) for _, a in found}  # (report: dest label_column)
        assert len(kinds) == 1, (spelling, [(c, a.dest, a.type, a.choices) for c, a in found])
    names = collections.Counter()
    for path in sorted(TOOLS_SOURCE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            is_flag = isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("CommandFlag", "switch")
            if is_flag and node.args and isinstance(node.args[0], ast.Constant):
                names[node.args[0].value] += 1
    assert names and max(names.values()) == 1, [n for n, k in names.items() if k > 1]


@pytest.mark.parametrize("command", TOOLS)
def test_each_tools_defaults_are_written_once_and_its_python_functions_share_them(command):
    """No number is written as a default in a tool's table (a named constant the code uses too, or a
    shared flag's); a public function of the tool with a parameter named as a flag defaults to the
    flag's default, so the command and the Python call agree (-k, --seed, --batch-rows, ...)."""
    module, parser = _trainer(command)
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    [table] = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "FLAGS"]
    literal = [
        k.value.value
        for k in ast.walk(table)
        if isinstance(k, ast.keyword) and k.arg == "default" and isinstance(k.value, ast.Constant)
        if type(k.value.value) in (int, float)
    ]
    assert literal == [], f"{command}: numeric defaults written in the table: {literal}"
    defaults = {a.dest: a.default for a in parser._actions}
    compared = 0
    for name in module.__all__:
        function = getattr(module, name)
        if not inspect.isfunction(function) or name == "main_from_args":
            continue
        for parameter in inspect.signature(function).parameters.values():
            if parameter.name in defaults and parameter.default is not inspect.Parameter.empty:
                assert parameter.default == defaults[parameter.name], (name, parameter.name)
                compared += 1
    assert compared or command in ("build-index", "export-word-vectors"), command


@pytest.mark.parametrize("command", TRAINERS)
def test_each_trainer_configs_defaults_are_its_declared_defaults(command):
    """The config dataclass writes no default of its own (but `verbose`, which no flag sets): a
    config from flags that set nothing optional is the dataclass with its defaults."""
    module, parser = _trainer(command)
    config_name, required = TRAINERS[command]
    config_type = getattr(module, config_name)
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    [config_class] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == config_name]
    for statement in config_class.body:
        if isinstance(statement, ast.AnnAssign) and statement.value is not None and statement.target.id != "verbose":
            assert not isinstance(statement.value, ast.Constant), f"{config_name}.{statement.target.id}: a literal default"
    set_by_flags = {flag.config_field for flag in module.FLAGS}
    assert {f.name for f in dataclasses.fields(config_type)} - set_by_flags == {"verbose"}
    from pipeline.train.common import config_values

    values = config_values(module.FLAGS, parser.parse_args(required))
    given = {flag.config_field for flag in module.FLAGS if flag.name in required}
    assert config_type(**values) == config_type(**{name: values[name] for name in given})
    assert len(values) >= 20
