"""The README's library example, run exactly as it is written there, in a folder holding what
`./run_local.sh` leaves (`demo_data/`: the demo images, the demo image model's architecture, a text
model with `train-text`'s layers) and nothing else: the block needs no file that nothing makes."""

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
def test_library_example_runs_as_written(tmp_path, tiny_text_model):
    from examples.demo import IMAGE_CLASSES, build_demo_image_model, make_demo_images

    demo = tmp_path / "demo_data"  # what run_local.sh writes (the models untrained here: the same layers)
    make_demo_images(str(demo / "images"))
    build_demo_image_model(len(IMAGE_CLASSES)).save(demo / "image_model.keras")
    shutil.copy(tiny_text_model, demo / "text_model.keras")

    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", readme_block(MARKER)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]

    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "embeddings.jsonl").read_text().splitlines())}
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert set(rows) == {"r1", "r2", "circle", "square"}
    assert [(e["id"], e["stage"], e["error_type"]) for e in errors] == [("r3", "read", "InvalidTextField")]
    assert rows["r1"]["label"] == "1" and rows["r2"]["label"] == "0"
    assert len(rows["r1"]["embedding"]) == 8  # the tiny text model
    assert len(rows["circle"]["embedding"]) == len(rows["square"]["embedding"]) == 64  # the demo model's `features`
    assert rows["circle"]["embedding"] != rows["square"]["embedding"]
    assert "image_model.keras" in rows["circle"]["model"] and "features" in rows["circle"]["model"]
