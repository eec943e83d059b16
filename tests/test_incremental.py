"""Issue 5, section 4: scheduled incremental runs embed only new or changed records."""

import json

import pytest
from PIL import Image

from pipeline.run import main, run
from transforms.results import read_embeddings


def _write_records(path, records):
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in records.items()))


@pytest.mark.slow
def test_rerun_embeds_only_new_or_changed_records(tmp_path, tiny_text_model, tiny_image_model):
    texts = {f"r{i}": f"good film {i}" for i in range(20)}
    _write_records(tmp_path / "t.jsonl", texts)
    images = tmp_path / "img"
    images.mkdir()
    for i in range(6):
        Image.new("RGB", (20, 20), (i * 40, 10, 10)).save(images / f"{i}.png")
    common = [
        "--text-input",
        str(tmp_path / "t.jsonl"),
        "--text-model",
        str(tiny_text_model),
        "--image-input",
        str(images / "*.png"),
        "--image-model",
        str(tiny_image_model),
    ]
    first = run(["--output", str(tmp_path / "run1")] + common)
    assert first["counts"]["text"]["embedded"] == 20 and first["counts"]["image"]["embedded"] == 6

    texts["r3"] = "awful plot now"  # changed
    texts["new1"] = "great acting"  # added
    del texts["r7"]  # removed: nothing to do
    _write_records(tmp_path / "t.jsonl", texts)
    Image.new("RGB", (20, 20), (0, 200, 0)).save(images / "1.png")  # changed
    Image.new("RGB", (20, 20), (0, 0, 200)).save(images / "new.png")  # added

    second = run(["--output", str(tmp_path / "run2"), "--incremental-from", str(tmp_path / "run1")] + common)
    text, image = second["counts"]["text"], second["counts"]["image"]
    assert text == {"read": 20, "embedded": 2, "failed": 0, "skipped": 18, "removed": 1, "balanced": True}  # r7 left
    assert image == {"read": 7, "embedded": 2, "failed": 0, "skipped": 5, "removed": 0, "balanced": True}
    assert sorted(read_embeddings(str(tmp_path / "run2"), "text").column("id").to_pylist()) == ["new1", "r3"]
    assert sorted(read_embeddings(str(tmp_path / "run2"), "image").column("id").to_pylist()) == ["1.png", "new.png"]

    # several earlier runs together: nothing left to do
    third = run(
        [
            "--output",
            str(tmp_path / "run3"),
            "--incremental-from",
            str(tmp_path / "run1"),
            "--incremental-from",
            str(tmp_path / "run2"),
        ]
        + common
    )
    assert third["counts"]["text"]["skipped"] == 20 and third["counts"]["text"]["embedded"] == 0
    assert third["counts"]["image"]["skipped"] == 7

    # a different model embeds everything again
    from conftest import make_tiny_text_model

    other = make_tiny_text_model(tmp_path / "other.keras", dim=4)
    argv = [
        "--output",
        str(tmp_path / "run4"),
        "--incremental-from",
        str(tmp_path / "run2"),
        "--text-input",
        str(tmp_path / "t.jsonl"),
        "--text-model",
        str(other),
    ]
    assert run(argv)["counts"]["text"] == {"read": 20, "embedded": 20, "failed": 0, "skipped": 0, "removed": 0, "balanced": True}


def test_incremental_from_an_unfinished_run_is_a_configuration_error(tmp_path, capsys, tiny_text_model):
    _write_records(tmp_path / "t.jsonl", {"a": "good"})
    (tmp_path / "half").mkdir()
    code = main(
        [
            "--output",
            str(tmp_path / "out"),
            "--text-input",
            str(tmp_path / "t.jsonl"),
            "--text-model",
            str(tiny_text_model),
            "--incremental-from",
            str(tmp_path / "half"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--incremental-from" in err and "did not finish" in err
