"""The README's library example, run exactly as it is written there."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.tests_support import PROJECT_ROOT

MARKER = "<!-- tests/test_readme.py runs this block as it is -->"


def readme_block(marker: str) -> str:
    """The ```python block that follows `marker` in README.md."""
    text = (PROJECT_ROOT / "README.md").read_text()
    assert marker in text, f"README.md lost the marker {marker!r}"
    after = text[text.index(marker) + len(marker) :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("\n```", start)] + "\n"


@pytest.mark.slow
@pytest.mark.shared_data
def test_library_example_runs_as_written(tmp_path, shared_data, tiny_text_model):
    (tmp_path / "models").mkdir()
    shutil.copy(tiny_text_model, tmp_path / "models" / "text.keras")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "mobilenet_2_5_224_tf_no_top.h5").symlink_to(
        shared_data / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
    )
    (tmp_path / "photos").mkdir()
    pictures = sorted((shared_data / "images" / "imagenette-sample").rglob("*.JPEG"))
    shutil.copy(pictures[0], tmp_path / "photos" / "cat.jpg")
    shutil.copy(pictures[-1], tmp_path / "photos" / "dog.jpg")

    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", readme_block(MARKER)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]

    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "embeddings.jsonl").read_text().splitlines())}
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert set(rows) == {"r1", "r2", "cat", "dog"}
    assert [(e["id"], e["stage"], e["error_type"]) for e in errors] == [("r3", "read", "InvalidTextField")]
    assert rows["r1"]["label"] == "1" and rows["r2"]["label"] == "0"
    assert len(rows["r1"]["embedding"]) == 8  # the tiny text model
    assert len(rows["cat"]["embedding"]) == len(rows["dog"]["embedding"]) == 256  # MobileNet 0.25
    assert rows["cat"]["embedding"] != rows["dog"]["embedding"]
    assert rows["cat"]["model"] == "keras.applications.MobileNet(size=224, alpha=0.25, weights=mobilenet_2_5_224_tf_no_top.h5)"
