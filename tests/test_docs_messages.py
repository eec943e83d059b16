"""Issue 22, item 9: what the docs and the messages tell a user is true.

Each test fails on the mistake it is named after: a cited Python name that does not import, a
suggested flag that `run` refuses, a "rerun" hint for a folder that does not exist, an overfitting
warning at equal accuracies, a plot title cut at the image's edge, a template help that offers
local paths its regex refuses, files the README's commands make that git would pick up, a run time
that leaves out most of the wait, a Parquet recipe without `use_threads=False`.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipeline.run import format_summary, main
from pipeline.tools.common import ToolError
from tests_support import PROJECT_ROOT, run_pipeline
from transforms.results import MANIFEST_NAME, IncompleteOutputError, read_manifest, run_folder_lacks

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


# ---- cited Python names import ------------------------------------------------------------------


def _cited_names() -> list[tuple[str, str]]:
    """(doc, dotted name) of every `transforms.x.y` / `pipeline.x.y` name and every
    `from transforms... import a, b` the docs cite."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for module, names in re.findall(r"from ((?:transforms|pipeline)[\w.]*) import ([\w, ]+)", text):
            found += [(doc.name, f"{module}.{name.strip()}") for name in names.split(",") if name.strip()]
        found += [(doc.name, m) for m in re.findall(r"(?<![\w./])((?:transforms|pipeline)(?:\.\w+)+)(?=\(|`)", text)]
    return sorted(set(found))


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                target = getattr(target, name)
        except AttributeError:
            return False
        return True
    return False


def test_every_python_name_the_docs_cite_imports():
    cited = _cited_names()
    assert ("querying.md", "transforms.read_embeddings") in cited  # the corrected citation is seen
    missing = [f"{doc}: {name}" for doc, name in cited if not _resolves(name)]
    assert not missing, missing


# ---- evaluate's messages ---------------------------------------------------------------------------


def _write_run(folder, passthrough: dict[str, list[str]], vectors: np.ndarray) -> str:
    from test_tools_support import write_run  # the tools' tests' helper: a finished run's layout

    return str(write_run(folder, vectors, passthrough=passthrough))


def test_evaluate_never_suggests_a_passthrough_that_run_refuses(tmp_path, tiny_text_model, capsys):
    from pipeline.tools.evaluate import load_labelled_vectors
    from pipeline.tools.store import open_embeddings

    vectors = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    run = _write_run(tmp_path / "run", {"label": ["a", "b"] * 6}, vectors)
    embeddings = open_embeddings(run, None)
    for field in ("source", "id", "model"):
        with pytest.raises(ToolError) as refused:
            load_labelled_vectors(embeddings, field)
        message = str(refused.value)
        assert f"--passthrough {field}" not in message and "passthrough columns: label" in message
        # and `run` does refuse what the old message suggested:
        data = tmp_path / "a.jsonl"
        data.write_text('{"id": "a", "text": "good film"}\n')
        argv = ["--output", str(tmp_path / "o"), "--text-input", str(data), "--text-model", str(tiny_text_model)]
        assert main([*argv, "--passthrough", field]) == 2
    capsys.readouterr()
    with pytest.raises(ToolError, match="run the job with --passthrough colour"):
        load_labelled_vectors(embeddings, "colour")  # a name `run` accepts is still suggested


@pytest.mark.parametrize(("train", "held_out", "overfits"), [(1.0, 1.0, False), (0.93, 0.9, False), (1.0, 0.6, True)])
def test_evaluate_warns_of_overfitting_only_when_training_accuracy_is_well_above(train, held_out, overfits):
    from pipeline.tools.evaluate import format_evaluation

    report = {
        "embeddings": "OUT",
        "modality": "text",
        "model": "m",
        "label_field": "label",
        "rows": 100,
        "evaluated": 100,
        "skipped_unlabelled": 0,
        "skipped_invalid": 0,
        "classes": 2,
        "class_counts": {"a": 50, "b": 50},
        "k": 10,
        "chance_precision": 0.5,
        "precision_at_1": 0.9,
        "precision_at_10": 0.9,
        "linear_probe": {
            "accuracy": held_out,
            "train_accuracy": train,
            "majority_accuracy": 0.5,
            "test_rows": 20,
            "train_rows": 80,
        },
    }
    text = format_evaluation(report)
    assert ("above held-out accuracy: overfitting" in text) is overfits
    assert ("close to held-out accuracy: no overfitting" in text) is (not overfits)


# ---- a missing folder is not "rerun the same command" ------------------------------------------------


def test_a_missing_folder_is_named_as_missing_never_as_a_run_to_rerun(tmp_path, tiny_text_model, capsys):
    gone = tmp_path / "no-such-run"
    with pytest.raises(IncompleteOutputError) as missing:
        read_manifest(str(gone))
    assert "no such folder" in str(missing.value) and "rerun" not in str(missing.value)
    data = tmp_path / "a.jsonl"
    data.write_text('{"id": "a", "text": "good film"}\n')
    argv = ["--output", str(tmp_path / "o"), "--text-input", str(data), "--text-model", str(tiny_text_model)]
    assert main([*argv, "--incremental-from", str(gone)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"--incremental-from '{gone}': no such folder" in line and "rerun" not in line
    done = run_pipeline("neighbors", "--embeddings", gone, "--id", "a", timeout=300)
    assert "no such folder" in done.stderr and "rerun" not in done.stderr


def test_one_predicate_tells_a_missing_folder_from_an_unfinished_run_for_both_readers(tmp_path):
    """`run_folder_lacks` serves read_manifest and the --incremental-from check (each with its own error):
    a missing folder, a folder with no manifest (an unfinished run: read_manifest says to rerun), a finished one."""
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / MANIFEST_NAME).write_text('{"status": "complete"}')
    assert [run_folder_lacks(str(f)) for f in (tmp_path / "gone", unfinished, finished)] == ["folder", "manifest", None]
    with pytest.raises(IncompleteOutputError, match="did not finish .*rerun the same command"):
        read_manifest(str(unfinished))
    assert read_manifest(str(finished)) == {"status": "complete"}


# ---- the PCA plot's title stays inside the image ---------------------------------------------------


def test_the_pca_plot_title_is_not_cut_at_the_right_edge():
    from pipeline.tools.projector import draw_scatter

    model = "gs://my-company-bucket/models/2026-11-26/experiments/image-classifier-resnet-v3-final.keras#embedding"
    title = f"PCA of 12,345 image embeddings, model {model}"
    png = draw_scatter(np.random.default_rng(0).normal(size=(40, 2)), None, title, [0.3, 0.2], subtitle="all 40 usable rows")
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("L"))
    band = pixels[8:60]  # the title and subtitle lines
    assert (band < 128).any(), "the title is drawn"
    assert (band[:, -12:] > 250).all(), "the title runs into the image's right edge"


# ---- the flex template's help matches its regexes ---------------------------------------------------


def test_the_flex_template_offers_local_paths_only_where_its_regex_takes_them():
    metadata = json.loads((PROJECT_ROOT / "flex_template" / "metadata.json").read_text())
    for parameter in metadata["parameters"]:
        regexes = parameter.get("regexes", [])
        if "local" in parameter["helpText"]:
            assert all(re.match(r, "/home/me/out") for r in regexes), parameter["name"]
    output = next(p for p in metadata["parameters"] if p["name"] == "output")
    assert "(gs://)" in output["helpText"] and not re.match(output["regexes"][0], "/home/me/out")


# ---- what the README's commands make, git does not pick up -------------------------------------------


@pytest.mark.parametrize("path", ["models/text.keras", "models/rt.keras", "out/embeddings.jsonl", "demo_data/x", "demo_output/x"])
def test_files_the_readme_commands_make_are_git_ignored(path):
    assert f"--output {path.split('/')[0]}/" in (PROJECT_ROOT / "README.md").read_text() or path.split("/")[0] in {
        "demo_data",
        "demo_output",
        "out",
    }
    done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=PROJECT_ROOT)
    assert done.returncode == 0, f"{path} is not git-ignored"


# ---- the summary's time is the wait -----------------------------------------------------------------


def test_the_summary_gives_the_whole_wait_beside_the_pipeline_time():
    manifest = {
        "run_id": "r1",
        "output": "out",
        "counts": {"text": {"read": 10, "embedded": 10, "failed": 0, "skipped": 0, "balanced": True}},
        "files": {},
    }
    first = format_summary(manifest, 2.4, total=12.0).splitlines()
    assert first[0] == "Run r1 finished in 12.0 s (the pipeline itself 2.4 s) -> out"
    assert first[2].split()[5] == "4.2"  # rec/s: per second of the pipeline


def test_a_command_line_run_counts_from_the_process_start(tmp_path, tiny_text_model):
    """The first run of a `python -m pipeline run` process counts Python's and TensorFlow's start-up
    and the launch checks, so "finished in" is more than the pipeline's own time."""
    data = tmp_path / "a.jsonl"
    data.write_text('{"id": "a", "text": "good film"}\n')
    done = run_pipeline("run", "--output", tmp_path / "o", "--text-input", data, "--text-model", tiny_text_model, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("Run "))
    total, pipeline_only = map(float, re.search(r"finished in ([\d.]+) s \(the pipeline itself ([\d.]+) s\)", line).groups())
    assert total > pipeline_only


# ---- Parquet recipes read single-threaded ------------------------------------------------------------


def test_the_pyarrow_recipes_read_single_threaded_and_say_why():
    text = (PROJECT_ROOT / "docs" / "querying.md").read_text()
    assert "use_threads=False" in text and "terminate called without an active exception" in " ".join(text.split())
    for call in re.findall(r"(?:\.to_table|pd\.read_parquet|pq\.read_table)\([^\n]*\)", text):
        if "..." not in call:  # the prose naming the readers, not a recipe
            assert "use_threads=False" in call, call


# ---- the README stays short, and every relative link lands on a file -----------------------------------


def test_the_readme_is_at_most_400_lines():
    lines = (PROJECT_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 400, f"README.md has {len(lines)} lines: move detail into docs/*.md (issue 21)"


def _relative_links(doc) -> list[str]:
    """Targets of the Markdown links `[text](target)` in `doc` that are not URLs or in-page anchors."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # links inside code blocks are code
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_every_relative_link_in_the_readme_and_docs_points_at_a_file():
    checked = 0
    broken = []
    for doc in DOCS:
        for target in _relative_links(doc):
            checked += 1
            if not (doc.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{doc.relative_to(PROJECT_ROOT)}: {target}")
    assert checked > 20  # the README alone links to most docs pages
    assert not broken, broken
