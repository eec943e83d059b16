"""Issue 22, item 2: a folder as `--image-input` is a folder of images, as for `train-image --input`.

Every file below it at any depth with a known image extension (any case) is read, with ids as for
the glob `DIR/**`; a manifest or any other file beside the images is not an image and is not read
(never a dead letter); a folder with no images is a launch error (exit 2) before any model loads.
"""

from __future__ import annotations

import pathlib

import pytest
from PIL import Image

from pipeline.run import main
from pipeline.tools.common import ToolError
from pipeline.train.image import list_labelled_images
from transforms.io import fileio
from transforms.io.image_read import image_input_paths, is_manifest
from transforms.results import read_embeddings, read_errors, read_manifest

IMAGENETTE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "imagenette-sample"  # ../shared/data


def _png(path: pathlib.Path, shade: int = 7) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 36), (shade, 2 * shade, 3 * shade)).save(path)
    return path


@pytest.mark.skipif(not IMAGENETTE.is_dir(), reason="the shared imagenette sample is not here")
def test_the_imagenette_folder_embeds_its_300_images_and_leaves_its_manifest_alone(tmp_path, tiny_image_model, caplog):
    out = tmp_path / "out"
    caplog.set_level("INFO", logger="pipeline")
    assert main(["--output", str(out), "--image-input", str(IMAGENETTE), "--image-model", str(tiny_image_model)]) == 0
    table = read_embeddings(str(out), "image")
    ids = table.column("id").to_pylist()
    expected = sorted(p.relative_to(IMAGENETTE).as_posix() for p in IMAGENETTE.rglob("*.JPEG"))
    assert len(expected) == 300 and sorted(ids) == expected  # ids as for IMAGENETTE/**: class/file.JPEG
    assert read_errors(str(out)).num_rows == 0, "MANIFEST.csv must not be read as an image"
    counts = read_manifest(str(out))["counts"]["image"]
    assert counts["read"] == 300 and counts["embedded"] == 300 and counts["failed"] == 0
    assert any("1 other file(s) are not images" in r.getMessage() and "MANIFEST.csv" in r.getMessage() for r in caplog.records)


def test_a_folder_reads_images_at_any_depth_in_any_case_and_ids_match_the_dir_glob(tmp_path, tiny_image_model):
    photos = tmp_path / "photos"
    _png(photos / "a.png", 10)
    _png(photos / "deep" / "er" / "b.PNG", 20)
    (photos / "deep" / "c.JpG").write_bytes((_png(tmp_path / "c.png", 30)).read_bytes())  # a PNG named .JpG decodes by content
    (photos / "labels.jsonl").write_text('{"uri": "a.png"}\n')
    (photos / "notes.txt").write_text("not an image")
    (photos / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    by_folder, by_glob = tmp_path / "folder", tmp_path / "glob"
    assert main(["--output", str(by_folder), "--image-input", f"{photos}/", "--image-model", str(tiny_image_model)]) == 0
    assert (
        main(
            [
                "--output",
                str(by_glob),
                "--image-input",
                f"{photos}/**",
                "--image-model",
                str(tiny_image_model),
                "--max-failed-fraction",
                "1",
            ]
        )
        == 0
    )
    folder_ids = sorted(read_embeddings(str(by_folder), "image").column("id").to_pylist())
    assert folder_ids == ["a.png", "deep/c.JpG", "deep/er/b.PNG"]
    assert read_errors(str(by_folder)).num_rows == 0
    # The glob reads every file it matches: the same ids for the images, the rest are dead letters.
    assert sorted(read_embeddings(str(by_glob), "image").column("id").to_pylist()) == folder_ids
    assert read_errors(str(by_glob)).num_rows == 3


def test_a_folder_and_a_glob_inside_it_read_each_image_once(tmp_path, tiny_image_model):
    photos = tmp_path / "photos"
    _png(photos / "a.png", 10)
    _png(photos / "sub" / "b.png", 20)
    (photos / "sub" / "readme.txt").write_text("the glob says read me")
    out = tmp_path / "out"
    argv = [
        "--output",
        str(out),
        "--image-input",
        str(photos),
        "--image-input",
        f"{photos}/sub/*",
        "--image-model",
        str(tiny_image_model),
        "--max-failed-fraction",
        "1",
    ]
    assert main(argv) == 0
    assert sorted(read_embeddings(str(out), "image").column("id").to_pylist()) == ["a.png", "b.png"]
    [error] = read_errors(str(out)).to_pylist()  # the glob named readme.txt: read, and a dead letter
    assert error["id"] == "readme.txt"


@pytest.mark.parametrize("content", ["empty", "no images"])
def test_a_folder_without_images_fails_at_launch_naming_the_flag_and_folder(
    tmp_path, tiny_image_model, capsys, monkeypatch, content
):
    folder = tmp_path / "photos"
    folder.mkdir()
    if content == "no images":
        (folder / "MANIFEST.csv").write_text("path,label\nx.jpg,cat\n")
    import transforms.embed.models as models

    def no_model_loads(*args, **kwargs):  # the launch check must come before any model loads
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(models, "_load_keras_file", no_model_loads)
    out = tmp_path / "out"
    assert main(["--output", str(out), "--image-input", str(folder), "--image-model", str(tiny_image_model)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --image-input '{folder}': a folder with no images below it")
    assert ("it is empty" in line) if content == "empty" else ("'MANIFEST.csv'" in line and "are not images" in line)
    assert not out.exists()


def test_a_text_folder_stays_a_launch_error_suggesting_a_glob(tmp_path, tiny_text_model, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"id": "a", "text": "good film"}\n')
    assert main(["--output", str(tmp_path / "out"), "--text-input", str(folder), "--text-model", str(tiny_text_model)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --text-input '{folder}': is a folder") and f"'{folder}/**'" in line


def test_an_output_inside_an_input_folder_is_refused_as_for_its_glob(tmp_path, tiny_image_model, capsys):
    photos = tmp_path / "photos"
    _png(photos / "a.png")
    assert main(["--output", str(photos / "out"), "--image-input", str(photos), "--image-model", str(tiny_image_model)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --image-input '{photos}': would also read this run's own files") and "that folder" in line


def test_folder_helpers(tmp_path):
    photos = tmp_path / "data.csv"  # a folder named like a manifest is still a folder
    _png(photos / "x.webp")
    (photos / "m.jsonl").write_text("{}\n")
    assert fileio.is_folder(str(photos)) and not is_manifest(str(photos))
    assert fileio.is_folder("gs://bucket/photos/") and not fileio.is_folder("gs://bucket/photos")
    assert not fileio.is_folder(f"{photos}/*")
    assert image_input_paths([str(photos)]) == [str(photos / "x.webp")]


def test_train_image_reads_class_folders_with_the_same_extensions_and_ignores_manifests(tmp_path):
    data = tmp_path / "classes"
    _png(data / "cat" / "a.PNG")
    _png(data / "cat" / "deeper" / "b.jpeg")
    _png(data / "dog" / "c.png")
    (data / "MANIFEST.csv").write_text("path,label\ncat/a.PNG,cat\n")
    (data / "dog" / "labels.jsonl").write_text("{}\n")
    items = list_labelled_images(str(data))
    assert sorted((pathlib.Path(uri).relative_to(data).as_posix(), label) for uri, label in items) == [
        ("cat/a.PNG", "cat"),
        ("cat/deeper/b.jpeg", "cat"),
        ("dog/c.png", "dog"),
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ToolError, match="no images in class subfolders"):
        list_labelled_images(str(empty))
